"""Train CLIP4Clip on decoded frames: ``vidret encode train RUN/frames --manifest M --out RUN/model``.

Every caption of a training video is a sample. A step takes ``batch_size`` samples
(the global batch: all ranks and all accumulation micro-batches together) and
minimises open_clip's symmetric InfoNCE over all of them. Accumulation is exact:
as in open_clip, features of the other micro-batches are cached without gradients,
so the loss always sees the whole batch as negatives.

The data order is a function of (seed, epoch) alone, so a run's position is just
(epoch, step), and ``--resume`` continues exactly where ``last.pt`` left off.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline import defaults
from pipeline.encode.checkpoint import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    initialise_from,
    model_state,
    quiet_root_logger,
    read_checkpoint,
    save_checkpoint,
)
from pipeline.encode.distributed import World, barrier, broadcast_decision, close_world, init_world
from pipeline.encode.embed import caption_pairs, check_frame_size, evaluate
from pipeline.encode.loss import make_loss
from pipeline.encode.model import check_model_choice, check_precision, create_clip4clip
from pipeline.encode.optim import (
    NO_DECAY_RULES,
    OPTIMIZERS,
    SCHEDULES,
    freeze_clip_layers,
    lr_factor,
    make_optimizer,
    parameter_groups,
)
from pipeline.encode.reader import FrameBatch, FrameStore, frames_and_manifest, prefetch_batches, select_videos
from pipeline.errors import VidretError, check_number, check_paths, first_line, number_problem
from pipeline.files import sha256_file, sha256_json, write_json
from pipeline.manifest import ManifestEntry, read_manifest
from pipeline.stage import (
    Decision,
    Stage,
    begin,
    commit,
    decide,
    describe_changes,
    library_versions,
    locked,
    ran_because,
    skip_line,
)

HISTORY_FILE = "history.json"


RECIPES_DIR = Path(__file__).with_name("recipes")
FP16_SMALLEST = 2.0**-24  # the smallest positive float16


@dataclass(frozen=True)
class Recipe:
    """Every hyper-parameter a reference fixes, from a recipe file (``recipes/NAME.json``, or a path).

    The command line overrides the common ones; a recipe file of your own sets any.
    """

    epochs: int
    batch_size: int  # global: all ranks and accumulation steps together
    optimizer: str  # optim.OPTIMIZERS: adamw, or bertadam (CLIP4Clip's: no bias correction)
    lr: float  # new modules (the head); also the CLIP towers unless clip_lr is set
    clip_lr: float | None
    weight_decay: float
    no_decay: str  # optim.NO_DECAY_RULES: which parameters escape weight decay (mmengine's or CLIP4Clip's)
    schedule: str  # optim.SCHEDULES
    warmup: float  # fraction of all steps
    warmup_start: float  # learning-rate factor at step 0
    beta1: float
    beta2: float
    eps: float
    grad_clip: float | None  # max global gradient norm
    param_grad_clip: float | None  # max gradient norm of each parameter, after the global clip (BertAdam's)
    freeze_layers: int  # CLIP's embeddings and its first N blocks per tower are frozen; -1: nothing
    max_logit_scale: float | None  # clamp the logit scale to this after each step; None: never
    precision: str  # model.PRECISIONS; recorded in the model's spec
    normalize_frames: bool  # L2-normalise frame features before the mean (CLIP4Clip) or not (MMAction2)


def available_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.json"))


def load_recipe(name: str) -> Recipe:
    """A shipped recipe by name, or a recipe file by path."""
    path = Path(name) if name.endswith(".json") else RECIPES_DIR / f"{name}.json"
    if not path.is_file():
        raise VidretError(f"unknown recipe {name!r}; choose one of {', '.join(available_recipes())} or a .json file")
    try:
        fields = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VidretError(f"{path}: not a readable recipe ({first_line(error)})") from None
    expected = {item.name for item in dataclass_fields(Recipe)}
    if not isinstance(fields, dict) or fields.keys() != expected:
        given = set(fields) if isinstance(fields, dict) else set()
        missing, unknown = (", ".join(sorted(names)) or "none" for names in (expected - given, given - expected))
        raise VidretError(
            f"{path}: a recipe needs exactly the fields of Recipe (missing: {missing}; unknown: {unknown})"
        )
    recipe = Recipe(**fields)
    check_recipe_fields(recipe, name)
    return recipe


def make_recipe(name: str, **overrides) -> Recipe:
    """The recipe ``name`` with the given fields replaced (None leaves a field as the recipe has it)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    recipe = replace(load_recipe(name), **given)
    check_recipe_fields(recipe, name, given)
    checks = [
        (
            recipe.schedule != "warmup_cosine" or recipe.warmup_start == 0,
            f"{recipe_field_name('warmup_start', given)} must be 0 with the warmup_cosine schedule, which warms up"
            f" from 0; got {recipe.warmup_start:g}",
        ),
        (
            recipe.optimizer != "adamw" or not recipe.param_grad_clip,
            "param_grad_clip clips each parameter's gradient inside BertAdam; the adamw optimizer has no such step"
            f" (set it to null), got {recipe.param_grad_clip}",
        ),
        (
            recipe.precision != "fp16" or recipe.eps >= FP16_SMALLEST,
            f"--precision fp16 keeps the optimiser's moments in fp16, where --eps {recipe.eps:g} is 0 and a zero"
            f" gradient updates by 0/0; use an eps of at least {FP16_SMALLEST:.2g} (CLIP4Clip's: 1e-6)"
            " or --precision amp",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise VidretError(f"recipe {name}: {message}")
    return recipe


# Each number field of Recipe: (integer, bounds, may be None, why); see pipeline.errors.number_problem.
RECIPE_NUMBERS = {
    "epochs": (True, {"at_least": 1}, False, ""),
    "batch_size": (True, {"at_least": 2}, False, "a contrastive batch needs negatives"),
    "lr": (False, {"above": 0}, False, ""),
    "clip_lr": (False, {"at_least": 0}, True, ""),
    "weight_decay": (False, {"at_least": 0}, False, ""),
    "warmup": (False, {"at_least": 0, "below": 1}, False, "a fraction of all steps"),
    "warmup_start": (False, {"at_least": 0, "at_most": 1}, False, "the learning-rate factor at step 0"),
    "beta1": (False, {"at_least": 0, "below": 1}, False, ""),
    "beta2": (False, {"at_least": 0, "below": 1}, False, ""),
    "eps": (False, {"above": 0}, False, ""),
    "grad_clip": (False, {"at_least": 0}, True, "0 or null: no clipping"),  # a negative max ascends
    "param_grad_clip": (False, {"at_least": 0}, True, "0 or null: no clipping"),
    "freeze_layers": (True, {"at_least": -1}, False, "a number of CLIP blocks, or -1 to freeze nothing"),
    "max_logit_scale": (False, {"above": 0}, True, "null: no clamp"),
}
# The Recipe fields `vidret encode train` has an option for.
RECIPE_FLAGS = {
    "epochs", "batch_size", "lr", "clip_lr", "weight_decay", "warmup", "warmup_start", "beta1", "beta2", "eps",
    "grad_clip", "freeze_layers", "precision", "normalize_frames",
}  # fmt: skip


def recipe_field_name(field_name: str, given: dict | set = ()) -> str:
    """A Recipe field as a message names it: the option when the command line ``given`` it, the field (and its
    option, where there is one) when it comes from the recipe file."""
    flag = "--" + field_name.replace("_", "-") if field_name in RECIPE_FLAGS else None
    if flag and field_name in given:
        return flag
    return f"{field_name} ({flag})" if flag else field_name


def check_recipe_fields(recipe: Recipe, name: str, given: dict | set = ()) -> None:
    """Refuse a Recipe field of the wrong type, out of its range or not one of its choices, in one line naming
    the recipe and the field (``given``: the fields the command line set)."""

    for field_name, (integer, bounds, optional, why) in RECIPE_NUMBERS.items():
        value = getattr(recipe, field_name)
        problem = None if optional and value is None else number_problem(value, integer=integer, **bounds)
        if problem:
            why = f" ({why})" if why else ""
            raise VidretError(f"recipe {name}: {recipe_field_name(field_name, given)} {problem}{why}")
    try:
        check_precision(recipe.precision)
    except VidretError as error:
        raise VidretError(f"recipe {name}: {error}") from None
    choices = {"optimizer": OPTIMIZERS, "no_decay": NO_DECAY_RULES, "schedule": SCHEDULES}
    for field_name, allowed in choices.items():
        value = getattr(recipe, field_name)
        if not isinstance(value, str) or value not in allowed:
            raise VidretError(
                f"recipe {name}: {recipe_field_name(field_name, given)}: choose one of {', '.join(allowed)},"
                f" got {value!r}"
            )
    if not isinstance(recipe.normalize_frames, bool):
        raise VidretError(
            f"recipe {name}: {recipe_field_name('normalize_frames', given)} must be true or false,"
            f" got {recipe.normalize_frames!r}"
        )


@dataclass
class TrainOptions:
    frames_dir: Path
    manifest: Path
    out: Path
    model: str = defaults.MODEL
    pretrained: str = defaults.PRETRAINED
    head: str = defaults.HEAD
    caption_length: int | None = None  # tokens per caption (CLIP4Clip's max_words); None: the full context
    linear_patch: str = defaults.LINEAR_PATCH
    init_from: Path | None = None  # a vidret checkpoint whose towers (and head) replace the CLIP weights
    recipe: Recipe = field(default_factory=lambda: load_recipe(defaults.RECIPE))
    recipe_name: str = defaults.RECIPE
    accum_steps: int = defaults.ACCUM_STEPS
    seed: int = defaults.TRAIN_SEED
    deterministic: bool = False
    video_root: Path | None = None
    device: str = defaults.DEVICE
    workers: int = defaults.READ_WORKERS  # frame-reading threads per process
    prefetch: int = 2  # batches read ahead
    eval_batch_size: int = 64
    save_every: int = defaults.SAVE_EVERY  # steps between mid-epoch checkpoints; 0 = at epoch ends only
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps of this run
    resume: bool = False
    force: bool = False
    progress: bool = True
    init_from_sha256: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_paths(
            (self.frames_dir, "frames directory"), (self.manifest, "manifest"), (self.out, "output folder"),
            (self.video_root, "video root"), (self.init_from, "--init-from checkpoint"),
        )  # fmt: skip
        for name, value in (("--accum-steps", self.accum_steps), ("--workers", self.workers),
                            ("--prefetch", self.prefetch), ("--eval-batch-size", self.eval_batch_size)):  # fmt: skip
            check_number(name, value, integer=True, at_least=1)
        check_number("--save-every", self.save_every, integer=True, at_least=0)
        if self.stop_after is not None:
            check_number("--stop-after", self.stop_after, integer=True, at_least=1)
        check_number("--seed", self.seed, integer=True, at_least=0, below=2**32)  # numpy's seeds
        if self.resume and self.force:
            raise VidretError("--resume continues a run and --force starts over; pass one of them")
        check_model_choice(
            self.model, self.weights, self.head, self.caption_length, self.recipe.precision, self.linear_patch
        )
        if self.init_from is not None:
            if not Path(self.init_from).is_file():
                raise VidretError(f"--init-from {self.init_from}: no such checkpoint")
            self.init_from_sha256 = sha256_file(Path(self.init_from))

    @property
    def weights(self) -> str:
        """What the towers are built with before training: --init-from's checkpoint replaces the CLIP weights."""
        return "none" if self.init_from is not None else self.pretrained

    def run_params(self) -> dict:
        """What determines the trained weights: a resumed run must match these. The linear patch, added
        since the first runs, is recorded only away from its default, so that those runs still match."""
        params = {
            "model": self.model,
            "pretrained": self.pretrained,
            "head": self.head,
            "caption_length": self.caption_length,
            "recipe": self.recipe_name,
            **asdict(self.recipe),
            "seed": self.seed,
            "deterministic": self.deterministic,
        }
        if self.linear_patch != defaults.LINEAR_PATCH:
            params["linear_patch"] = self.linear_patch
        if self.init_from is not None:  # the checkpoint by its digest, in place of the CLIP weights
            del params["pretrained"]
            params["init_from"] = self.init_from_sha256
        return params


@dataclass
class TrainSummary:
    out: Path
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    epochs_done: int = 0
    stopped_early: bool = False
    best: dict | None = None
    last_loss: float = float("nan")
    uncaptioned: int = 0  # train and val videos left out: nothing to train or validate on
    is_main: bool = True  # under torchrun, only rank 0 reports
    skip_reason: str | None = None  # why nothing was trained
    ran_because: str = ""  # why a finished earlier run was replaced, as the line says it

    def line(self) -> str:
        if self.skip_reason:
            return skip_line("train", self.out)
        why = self.ran_because
        rate = self.samples / self.seconds if self.seconds else 0.0
        best = f", best val t2v R@1 {self.best['t2v']['R@1']:.1f} (epoch {self.best['epoch']})" if self.best else ""
        state = "stopped early; --resume continues" if self.stopped_early else f"{self.epochs_done} epochs"
        left_out = f"; {self.uncaptioned} uncaptioned videos left out" if self.uncaptioned else ""
        return (
            f"train: {self.steps} steps ({state}), {self.samples} videos in {self.seconds:.1f} s "
            f"({rate:.1f} videos/s), loss {self.last_loss:.4f}{best}{left_out} -> {self.out}{why}"
        )


def epoch_order(seed: int, epoch: int, units: list[np.ndarray]) -> np.ndarray:
    """The samples of an epoch: the ``units`` (``batch_units``) in a permutation drawn from (seed, epoch)."""
    return np.concatenate([units[i] for i in np.random.default_rng([seed, epoch]).permutation(len(units))])


def batch_units(entries: list[ManifestEntry]) -> list[np.ndarray]:
    """The samples (every caption of ``entries``, in order) that an epoch keeps together: the k-th captions of
    a group's videos (the manifest's ``group``) form one unit, as one another's hard negatives; every other
    sample is a unit of its own, so that a manifest without groups is shuffled sample by sample."""
    units, by_group = [], {}
    sample = 0
    for entry in entries:
        for number in range(len(entry.captions)):
            if entry.group is None:
                units.append([sample])
            elif (entry.group, number) in by_group:
                by_group[entry.group, number].append(sample)
            else:
                by_group[entry.group, number] = [sample]
                units.append(by_group[entry.group, number])
            sample += 1
    return [np.array(unit) for unit in units]


def micro_batches(batch: np.ndarray, accum_steps: int, world: World) -> list[np.ndarray]:
    """This rank's share of each accumulation step: the global batch is split by step, then by rank."""
    per_step = len(batch) // accum_steps
    per_rank = per_step // world.size
    return [
        batch[step * per_step + world.rank * per_rank : step * per_step + (world.rank + 1) * per_rank]
        for step in range(accum_steps)
    ]


def rng_state() -> dict:
    """torch's generators: the data order needs none (it is a function of seed and epoch)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this before its first call to be reproducible.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True


class Trainer:
    """One training run: the model, its optimiser and schedule, the data order, and checkpoints."""

    def __init__(
        self, options: TrainOptions, world: World, decision: Decision | None = None, inputs: dict | None = None
    ):
        """``decision``: why the run runs (from ``decide_training``); ``inputs``: ``training_inputs(options)``,
        computed if not given."""
        self.options, self.world, self.recipe = options, world, options.recipe
        inputs = inputs or training_inputs(options)
        self.stage = training_stage(options, inputs)
        self.decision = decision or Decision(True, "no earlier output", None)
        self.out = Path(options.out)
        self.store = FrameStore(options.frames_dir)
        if any(self.store.has_clips(video_id) for video_id in self.store.locations):
            raise VidretError(
                f"{options.frames_dir}: train needs whole-video frames: decode without --clip-seconds/--clip-shots"
            )
        manifest = read_manifest(options.manifest, options.video_root)
        # Uncaptioned videos have nothing to train or validate on: left out of both, and counted.
        split = {name: [entry for entry in manifest if entry.split == name] for name in ("train", "val")}
        self.uncaptioned = {name: sum(not entry.captions for entry in entries) for name, entries in split.items()}
        split = {name: [entry for entry in entries if entry.captions] for name, entries in split.items()}
        train = select_videos(self.store, manifest, split["train"])
        self.val = select_videos(self.store, manifest, split["val"]).entries
        self.video_ids = [entry.video_id for entry in train.entries for _ in entry.captions]
        self.units = batch_units(train.entries)
        captions = [caption for entry in train.entries for caption in entry.captions]
        self._check_batching(len(captions))
        self.train_views = self.store.shared_num_views(entry.video_id for entry in train.entries)
        self.steps_per_epoch = len(captions) // self.recipe.batch_size
        self.total_steps = self.steps_per_epoch * self.recipe.epochs

        seed_everything(options.seed, options.deterministic)
        # With --init-from the random towers are replaced at once: open_clip's "no weights" warning would mislead.
        with quiet_root_logger() if options.init_from else contextlib.nullcontext():
            self.model = create_clip4clip(
                options.model, options.weights, options.head, options.caption_length,
                precision=self.recipe.precision, normalize_frames=self.recipe.normalize_frames,
                linear_patch=options.linear_patch,
            )  # fmt: skip
        self.init_record = None
        if options.init_from is not None:
            self.init_record = {**initialise_from(self.model, options.init_from), "sha256": options.init_from_sha256}
        self.frozen = freeze_clip_layers(self.model, self.recipe.freeze_layers)
        every_video = {*self.video_ids, *(entry.video_id for entry in self.val)}
        check_frame_size(self.model, self.store.frame_shape(every_video), Path(options.frames_dir))
        self.model.to(world.device).train()
        self.tokens = self.model.tokenize(captions)
        self.val_tokens = self.model.tokenize(caption_pairs(self.val)[1]) if self.val else None
        recipe = self.recipe
        groups = parameter_groups(self.model, recipe.lr, recipe.clip_lr, recipe.weight_decay, recipe.no_decay)
        self.optimizer = make_optimizer(
            recipe.optimizer, groups, (recipe.beta1, recipe.beta2), recipe.eps, recipe.param_grad_clip
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(step, self.total_steps, recipe.schedule, recipe.warmup, recipe.warmup_start),
        )
        self.loss = make_loss(self.model, world)
        self.network: nn.Module = self.model
        if world.distributed:
            self.network = DistributedDataParallel(
                self.model, device_ids=[world.device.index] if world.device.type == "cuda" else None
            )
        self.epoch, self.step, self.global_step = 0, 0, 0
        # The current epoch's losses, kept across --resume; left on the device during the epoch, since
        # reading a loss waits for its step and would leave the GPU idle while the next one is launched.
        self.epoch_losses: list[torch.Tensor | float] = []
        self.history: list[dict] = []
        self.best: dict | None = None
        self.input_record = {
            **inputs,
            "train_videos": len(train.entries),
            "train_samples": len(captions),
            "train_views": self.train_views,
            "val_videos": len(self.val),
            "skipped": {"train": dict(train.skipped)},
            "uncaptioned_left_out": self.uncaptioned,
        }

    def _check_batching(self, num_samples: int) -> None:
        batch, accum, world = self.recipe.batch_size, self.options.accum_steps, self.world.size
        if batch % (accum * world):
            raise VidretError(f"--batch-size {batch} must divide evenly into --accum-steps {accum} x {world} processes")
        if num_samples < batch:
            raise VidretError(
                f"the train split has {num_samples} caption-video pairs with frames, fewer than --batch-size {batch}"
            )

    # -- checkpoints -------------------------------------------------------------------------

    def save(self) -> None:
        if self.world.is_main:
            save_checkpoint(
                self.out / LAST_CHECKPOINT,
                {
                    **model_state(self.model),
                    "params": self.options.run_params(),
                    "input_fingerprint": self.stage.fingerprint,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": rng_state(),
                    "position": {
                        "epoch": self.epoch,
                        "step": self.step,
                        "global_step": self.global_step,
                        "epoch_losses": [float(loss) for loss in self.epoch_losses],
                    },  # fmt: skip
                    "history": self.history,
                    "best": self.best,
                    "epoch": self.epoch,
                },
            )
        barrier(self.world)

    def restore(self) -> None:
        payload = read_checkpoint(self.out / LAST_CHECKPOINT)
        saved, current = payload.get("params", {}), self.options.run_params()
        if saved != current:
            raise VidretError(
                f"{self.out / LAST_CHECKPOINT}: --resume with other training parameters"
                f" ({describe_changes(saved, current)}); "
                "use the original ones, or --force to start over"
            )
        if payload.get("input_fingerprint", self.stage.fingerprint) != self.stage.fingerprint:
            raise VidretError(
                f"{self.out / LAST_CHECKPOINT}: --resume on other inputs: the frames or the manifest changed since"
                " this run started; --force starts over on them"
            )
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        set_rng_state(payload["rng"])
        position = payload["position"]
        self.epoch, self.step, self.global_step = position["epoch"], position["step"], position["global_step"]
        self.epoch_losses = position["epoch_losses"]
        self.history, self.best = payload["history"], payload["best"]

    def prepare_output(self) -> None:
        """Restore a resumed run; mark the output unfinished. An earlier run's checkpoints stay until this
        run writes its own."""
        if self.options.resume:
            self.restore()
        if self.world.is_main:
            begin(self.stage)
        barrier(self.world)

    # -- the loop ----------------------------------------------------------------------------

    def train_step(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One optimiser step over the micro-batches; returns the loss of the whole global batch (on the device)."""
        loss = self.backward(batches)
        if self.recipe.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.model.clamp_logit_scale(self.recipe.max_logit_scale)
        return loss

    def backward(self, batches: list[tuple[FrameBatch, torch.Tensor]]) -> torch.Tensor:
        """Gradients of the global batch's loss, whatever the number of micro-batches."""
        network = self.network

        def forward(batch: FrameBatch, tokens: torch.Tensor):
            with self.model.autocast():
                return network(batch.frames, tokens, batch.frame_mask)

        if len(batches) > 1:
            with torch.no_grad():
                cached = [forward(batch, tokens) for batch, tokens in batches]
        for index, (batch, tokens) in enumerate(batches):
            last = index == len(batches) - 1
            sync = contextlib.nullcontext() if last or not self.world.distributed else network.no_sync()
            with sync:
                outputs = forward(batch, tokens)
                parts = [outputs] if len(batches) == 1 else [*cached[:index], outputs, *cached[index + 1 :]]
                loss = self.loss(parts, index, last)
                loss.backward()
        return loss.detach()

    def epoch_batches(self):
        """(frames, tokens) micro-batches of this rank, from the current position to the epoch's end.

        With train views (``vidret decode --train-views K``), epoch e reads view e mod K: every epoch sees
        other frames, as MMAction2's train-mode sampling draws them afresh."""
        order = epoch_order(self.options.seed, self.epoch, self.units)
        batch = self.recipe.batch_size
        parts = [
            part
            for step in range(self.step, self.steps_per_epoch)
            for part in micro_batches(order[step * batch : (step + 1) * batch], self.options.accum_steps, self.world)
        ]
        frames = prefetch_batches(
            self.store,
            ([(self.video_ids[i], self.epoch % self.train_views) for i in part] for part in parts),
            threads=self.options.workers,
            depth=self.options.prefetch,
            pin_memory=self.world.device.type == "cuda",
        )
        for part, batch in zip(parts, frames, strict=True):
            yield batch, self.tokens[torch.from_numpy(part)]

    def validate(self) -> dict | None:
        if not self.val:
            return None
        metrics = evaluate(
            self.model,
            self.store,
            self.val,
            self.val_tokens,
            self.world,
            self.options.eval_batch_size,
            self.options.workers,
        )
        return {"epoch": self.epoch + 1, "t2v": metrics["t2v"], "v2t": metrics["v2t"]}

    def run(self) -> TrainSummary:
        options, recipe = self.options, self.recipe
        self.prepare_output()
        summary = TrainSummary(
            self.out, epochs_done=self.epoch, uncaptioned=sum(self.uncaptioned.values()), is_main=self.world.is_main,
            ran_because=ran_because(self.decision),
        )  # fmt: skip
        say = tqdm.write if self.world.is_main else (lambda _: None)
        bar = tqdm(
            total=self.total_steps, initial=self.global_step, unit="step", desc="train",
            disable=not (options.progress and self.world.is_main),
        )  # fmt: skip
        with bar:
            while self.epoch < recipe.epochs:
                started = time.perf_counter()
                steps_before = self.step
                batches = self.epoch_batches()
                shown = 0.0
                while self.step < self.steps_per_epoch:
                    step_batches = [next(batches) for _ in range(options.accum_steps)]
                    loss = self.train_step(step_batches)
                    self.epoch_losses.append(loss)
                    self.step += 1
                    self.global_step += 1
                    summary.steps += 1
                    summary.samples += recipe.batch_size
                    bar.update()
                    if time.perf_counter() - shown >= 1 or self.step == self.steps_per_epoch:
                        shown = time.perf_counter()
                        summary.last_loss = float(loss)
                        bar.set_postfix(
                            loss=f"{summary.last_loss:.4f}",
                            lr=f"{self.scheduler.get_last_lr()[-1]:.2e}",
                            videos_s=f"{summary.samples / (summary.seconds + shown - started):.1f}",
                        )
                    # At an epoch's end, end_epoch writes the checkpoint (after validation).
                    mid_epoch = self.step < self.steps_per_epoch
                    stop = mid_epoch and self.stop_reached(summary)
                    if stop or (mid_epoch and options.save_every and self.global_step % options.save_every == 0):
                        self.save()
                    if stop:
                        summary.last_loss = float(loss)
                        batches.close()
                        summary.seconds += time.perf_counter() - started
                        summary.stopped_early = True
                        return summary
                seconds = time.perf_counter() - started
                summary.seconds += seconds
                self.end_epoch((self.step - steps_before) * recipe.batch_size / seconds, say)
                summary.epochs_done = self.epoch
                if self.stop_reached(summary) and self.epoch < recipe.epochs:
                    summary.stopped_early = True
                    return summary
        summary.best = self.best
        self.finish(summary)
        return summary

    def stop_reached(self, summary: TrainSummary) -> bool:
        return self.options.stop_after is not None and summary.steps >= self.options.stop_after

    def end_epoch(self, videos_per_second: float, say) -> None:
        val = self.validate()
        record = {
            "epoch": self.epoch + 1,
            "loss": float(np.mean([float(loss) for loss in self.epoch_losses])),
            "videos_per_second": round(videos_per_second, 2),  # this run's steps of the epoch
            "val": val,
        }
        self.history.append(record)
        say(describe_epoch(record, self.recipe.epochs))
        self.epoch += 1
        self.step = 0
        self.epoch_losses = []
        # Selected on the validation split only, never on test; without a val split, the latest epoch.
        if val is None or self.best is None or is_better(val, self.best):
            self.best = val
            if self.world.is_main:
                save_checkpoint(
                    self.out / BEST_CHECKPOINT, {**model_state(self.model), "epoch": self.epoch, "val": val}
                )
        self.save()
        if self.world.is_main:
            write_json(self.out / HISTORY_FILE, self.history)

    def finish(self, summary: TrainSummary) -> None:
        if not self.world.is_main:
            return
        commit(
            self.stage,
            {
                "accum_steps": self.options.accum_steps,
                "world_size": self.world.size,
                "device": str(self.world.device),
                "input": self.input_record,
                "frozen_parameters": self.frozen,
                "init_from": self.init_record,
                "steps": {"per_epoch": self.steps_per_epoch, "total": self.total_steps},
                "best": self.best,
                "history": self.history,
                "checkpoints": {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT},
                "throughput": {
                    "seconds": round(summary.seconds, 3),
                    "videos_per_second": round(summary.samples / summary.seconds, 2) if summary.seconds else None,
                },
                "libraries": library_versions("torch", "open_clip_torch", "pyarrow"),
            },
            TRAIN_FILES,
        )


def is_better(val: dict, best: dict) -> bool:
    """Higher text-to-video R@1; on a tie, lower mean rank."""
    return (val["t2v"]["R@1"], -val["t2v"]["MnR"]) > (best["t2v"]["R@1"], -best["t2v"]["MnR"])


def describe_epoch(record: dict, epochs: int) -> str:
    line = f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}"
    val = record["val"]
    if val is None:
        return line + "; no val split, so no validation"
    t2v, v2t = val["t2v"], val["v2t"]
    return (
        f"{line}; val t2v R@1 {t2v['R@1']:.1f} R@5 {t2v['R@5']:.1f} R@10 {t2v['R@10']:.1f} "
        f"MdR {t2v['MdR']:g} MnR {t2v['MnR']:.1f} | v2t R@1 {v2t['R@1']:.1f} R@5 {v2t['R@5']:.1f} "
        f"R@10 {v2t['R@10']:.1f} MdR {v2t['MdR']:g} MnR {v2t['MnR']:.1f}"
    )


def training_inputs(options: TrainOptions) -> dict:
    """What training reads, with a fingerprint: the decoded frames and the manifest."""
    inputs = frames_and_manifest(options.frames_dir, options.manifest)
    return {**inputs, "fingerprint": sha256_json([inputs["frames_fingerprint"], inputs["manifest_sha256"]])}


TRAIN_FILES = (BEST_CHECKPOINT, LAST_CHECKPOINT, HISTORY_FILE)


def train(options: TrainOptions) -> TrainSummary:
    """Train and write ``best.pt``, ``last.pt`` and ``history.json``, then commit stage.json.

    Through the stage contract: a finished run in ``out`` from the same inputs with the same parameters
    is kept (skipped), one from other inputs or parameters is replaced. An unfinished run is continued
    with ``resume``, replaced with ``force``, and otherwise refused: it is not this run's to destroy.
    """
    world = init_world(options.device)
    try:
        inputs = training_inputs(options)
        out = Path(options.out)
        stage = training_stage(options, inputs)
        with locked(stage) if world.is_main else contextlib.nullcontext():
            decision = broadcast_decision(world, lambda: decide_training(stage, options))
            if not decision.run:
                return TrainSummary(out, is_main=world.is_main, skip_reason=decision.reason)
            return Trainer(options, world, decision, inputs).run()
    finally:
        close_world(world)


def training_stage(options: TrainOptions, inputs: dict) -> Stage:
    """The run's stage contract: ``inputs`` from ``training_inputs``."""
    frames = (Path(options.frames_dir),)
    return Stage("train", Path(options.out), inputs["fingerprint"], options.run_params(), frames, TRAIN_FILES)


def decide_training(stage: Stage, options: TrainOptions) -> Decision:
    """``stage.decide``, and the run a plain rerun must not destroy: an unfinished one in ``out``."""
    last = stage.out / LAST_CHECKPOINT
    decision = decide(stage, options.force)
    if options.resume:
        if not last.is_file():
            raise VidretError(f"--resume: {last} does not exist; start a new run without --resume")
        return Decision(True, "--resume", None)
    finished = decision.previous is not None and "finished" in decision.previous
    if decision.run and last.is_file() and not finished and not options.force:
        raise VidretError(f"{stage.out} holds an unfinished training run; --resume continues it, --force starts over")
    return decision
