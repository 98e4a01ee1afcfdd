"""The encode stage on real decoded frames: training, checkpoints, resume, DDP, embedding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from pipeline.encode.checkpoint import LAST_CHECKPOINT, load_model, model_state, read_checkpoint, save_checkpoint
from pipeline.encode.distributed import World
from pipeline.encode.embed import EmbedOptions, embed
from pipeline.encode.loss import DualLoss
from pipeline.encode.model import create_clip4clip
from pipeline.encode.reader import FrameStore, prefetch_batches
from pipeline.encode.train import (
    RECIPES_DIR,
    Recipe,
    Trainer,
    TrainOptions,
    available_recipes,
    epoch_order,
    load_recipe,
    make_recipe,
    micro_batches,
    train,
)
from pipeline.errors import VidretError
from pipeline.files import sha256_file
from pipeline.manifest import read_manifest, write_manifest
from pipeline.stage import read_stage

MODEL = "vidret-micro"
REPO = Path(__file__).resolve().parents[1]


def train_options(data, out, **overrides) -> TrainOptions:
    recipe = make_recipe("demo", **{"epochs": 2, "batch_size": 8, **overrides.pop("recipe", {})})
    defaults = dict(model=MODEL, pretrained="none", head="seqTransf", recipe=recipe, device="cpu", progress=False)
    return TrainOptions(frames_dir=data["frames"], manifest=data["manifest"], out=out, **{**defaults, **overrides})


def torchrun(processes: int, *command) -> subprocess.CompletedProcess:
    """``COMMAND`` (a module or script and its arguments) on the CPU in gloo processes under torchrun;
    asserts that it succeeded."""
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    ran = subprocess.run([*launch, *map(str, command)], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    return ran


def torchrun_two_processes(*args) -> subprocess.CompletedProcess:
    """``vidret ARGS`` on the CPU in two gloo processes under torchrun."""
    return torchrun(2, "-m", "cli.main", *args, "--device", "cpu", "--no-progress")


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def relative_update_differences(options: TrainOptions, a: dict, b: dict) -> dict[str, float]:
    """Per tensor, |a - b| / |a - initial weights|: how far two runs' updates differ, relative to their size.

    The key bias of every attention layer is left out: softmax ignores a constant added to all of a
    query's logits, so its true gradient is zero and AdamW turns float rounding noise into full-size steps.
    """
    initial = Trainer(options, _one()).model.state_dict()
    differences = {}
    for name in a:
        first, second, start = a[name].clone(), b[name].clone(), initial[name].clone()
        if name.endswith("attn.in_proj_bias"):
            width = len(first) // 3
            for tensor in (first, second, start):
                tensor[width : 2 * width] = 0
        if (first - start).norm() > 0:
            differences[name] = ((first - second).norm() / (first - start).norm()).item()
    return differences


def test_loss_equals_symmetric_infonce_computed_directly():
    """open_clip's ClipLoss, as DualLoss calls it, is CLIP's symmetric cross-entropy."""
    generator = torch.Generator().manual_seed(0)
    videos = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    texts = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    scale = torch.tensor(20.0)
    logits = scale * videos @ texts.T
    expected = 0
    for row in range(5):  # -log softmax of the matching pair, both directions
        expected += -torch.log_softmax(logits[row], 0)[row] - torch.log_softmax(logits[:, row], 0)[row]
    expected /= 2 * 5
    loss = DualLoss(_one())([(videos, texts, scale)], 0, True)
    assert torch.allclose(loss, expected, atol=1e-6)
    # Matching pairs scored higher make it smaller.
    assert DualLoss(_one())([(videos, videos, scale)], 0, True) < loss


def test_a_group_keeps_its_videos_kth_captions_together_and_no_group_shuffles_as_before():
    from pipeline.encode.train import batch_units
    from pipeline.manifest import ManifestEntry

    def entry(video_id, group=None):
        return ManifestEntry(video_id, Path(video_id), "train", ("a", "b", "c"), group)

    units = batch_units([entry("x", "g"), entry("y"), entry("z", "g")])
    assert [unit.tolist() for unit in units] == [[0, 6], [1, 7], [2, 8], [3], [4], [5]]
    order = epoch_order(5, 2, units)
    assert sorted(order.tolist()) == list(range(9))
    for first, second in ((0, 6), (1, 7), (2, 8)):
        assert abs(order.tolist().index(first) - order.tolist().index(second)) == 1
    plain = batch_units([entry("x"), entry("y")])
    assert epoch_order(5, 2, plain).tolist() == np.random.default_rng([5, 2]).permutation(6).tolist()


def test_micro_batches_split_the_global_batch_by_step_then_rank():
    batch = np.arange(8)
    shares = [micro_batches(batch, 2, World(rank, 2, torch.device("cpu"))) for rank in range(2)]
    assert [part.tolist() for part in shares[0]] == [[0, 1], [4, 5]]
    assert [part.tolist() for part in shares[1]] == [[2, 3], [6, 7]]


def test_training_lowers_the_loss_and_writes_checkpoints(decoded_synthetic, tmp_path):
    """Also: the validation metrics recorded for the best epoch are its checkpoint's, recomputed here from the
    val split's embeddings as ``vidret encode embed`` writes them with best.pt."""
    from pipeline.metrics import retrieval_metrics

    options = train_options(decoded_synthetic, tmp_path / "model", recipe={"epochs": 6})
    summary = train(options)
    history = json.loads((tmp_path / "model" / "history.json").read_text())
    losses = [record["loss"] for record in history]
    assert losses[-1] < losses[0] - 0.1, losses
    assert summary.steps == 6 * (3 * 28 // 8)  # 28 decoded train videos with 3 captions; the lost one skipped
    assert [record["val"]["epoch"] for record in history] == list(range(1, 7))
    stage = json.loads((tmp_path / "model" / "stage.json").read_text())
    assert stage["input"]["skipped"] == {"train": {"missing": 1}}
    assert stage["best"] == max((r["val"] for r in history), key=lambda v: (v["t2v"]["R@1"], -v["t2v"]["MnR"]))
    best = read_checkpoint(tmp_path / "model" / "best.pt")
    assert best["epoch"] == stage["best"]["epoch"]

    data = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    embed(EmbedOptions(*data, tmp_path / "val", checkpoint=tmp_path / "model" / "best.pt", split="val", progress=False))
    videos, texts = (pq.read_table(tmp_path / "val" / name).to_pandas() for name in ("videos.parquet", "texts.parquet"))
    val = [entry for entry in read_manifest(decoded_synthetic["manifest"]) if entry.split == "val"]
    assert videos["video_id"].tolist() == [entry.video_id for entry in val]
    assert texts["video_id"].tolist() == [entry.video_id for entry in val for _ in entry.captions]
    row_of = {video_id: row for row, video_id in enumerate(videos["video_id"])}
    recomputed = retrieval_metrics(
        np.stack(texts["embedding"]), np.stack(videos["embedding"]), texts["video_id"].map(row_of).to_numpy()
    )
    for direction in ("t2v", "v2t"):
        assert recomputed[direction] == pytest.approx(stage["best"][direction], abs=1e-4), direction
    assert not list((tmp_path / "model").glob(".*tmp-*"))


@pytest.mark.parametrize("stop_after", [4, 10], ids=["mid-epoch", "epoch-end"])  # 10 steps per epoch
def test_resumed_run_equals_an_uninterrupted_one(decoded_synthetic, tmp_path, stop_after):
    whole = train(train_options(decoded_synthetic, tmp_path / "whole"))
    stopped = train(train_options(decoded_synthetic, tmp_path / "split", stop_after=stop_after))
    assert stopped.stopped_early and stopped.steps == stop_after
    assert "finished" not in json.loads((tmp_path / "split" / "stage.json").read_text())
    resumed = train(train_options(decoded_synthetic, tmp_path / "split", resume=True))
    assert resumed.steps == whole.steps - stop_after
    expected, got = weights(tmp_path / "whole" / LAST_CHECKPOINT), weights(tmp_path / "split" / LAST_CHECKPOINT)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    history = [json.loads((tmp_path / run / "history.json").read_text()) for run in ("whole", "split")]
    assert [r["loss"] for r in history[0]] == [r["loss"] for r in history[1]]


def test_exact_accumulation_gives_the_full_batch_gradients(decoded_synthetic, tmp_path):
    """Four micro-batches of 2 give the gradients of one batch of 8, the logit scale's included.

    (Compared before the optimiser: AdamW's update is blind to a gradient scaled by a constant.)
    """
    gradients = []
    for accum_steps in (1, 4):
        trainer = Trainer(train_options(decoded_synthetic, tmp_path / "m", accum_steps=accum_steps), _one())
        batches = trainer.epoch_batches()
        loss = float(trainer.backward([next(batches) for _ in range(accum_steps)]))
        batches.close()
        gradients.append((loss, {name: p.grad.clone() for name, p in trainer.model.named_parameters()}))
    (full_loss, full), (accumulated_loss, accumulated) = gradients
    assert accumulated_loss == pytest.approx(full_loss, rel=1e-6)
    assert full.keys() == accumulated.keys()
    for name in full:
        # float32 sums in another order: equal to a few ulps of the tensor's largest entry (an
        # element-wise relative bound fails on entries that cancel to near zero).
        scale = float(full[name].abs().max())
        assert torch.allclose(accumulated[name], full[name], rtol=1e-4, atol=1e-5 * scale), name
    assert full["clip.logit_scale"].abs() > 1e-4  # the scale does get a gradient, counted once


def test_training_cuts_captions_to_the_caption_length(decoded_synthetic, tmp_path):
    """Train and val captions are cut to --caption-length tokens (EOT last, zeros after) in the model's spec."""
    trainer = Trainer(train_options(decoded_synthetic, tmp_path / "m", caption_length=6), _one())
    assert trainer.model.spec.caption_length == 6
    full = Trainer(train_options(decoded_synthetic, tmp_path / "m"), _one())
    for cut, uncut in ((trainer.tokens, full.tokens), (trainer.val_tokens, full.val_tokens)):
        assert cut.shape == uncut.shape == (len(uncut), 16)
        assert (cut.argmax(dim=-1) <= 5).all() and not cut[:, 6:].any()
        assert uncut[:, 6:].any()  # some captions are longer: the cut is real


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(decoded_synthetic, tmp_path):
    """torchrun, 2 processes, gloo: the same global batch of 8, so the same updates up to float summation order.

    Tolerance: after 20 AdamW steps at lr 1e-3, each tensor's update differs from the one-process run's by
    under 1% of its size (measured: at most 0.24%), the key biases aside (see relative_update_differences).
    """
    common = [decoded_synthetic["frames"], "--manifest", decoded_synthetic["manifest"], "--model", MODEL]
    common += ["--pretrained", "none", "--head", "seqTransf", "--recipe", "demo", "--epochs", "2", "--batch-size", "8"]
    ran = torchrun_two_processes("encode", "train", *common, "--out", tmp_path / "ddp")
    assert ran.stdout.count("train: 20 steps") == 1  # rank 0 alone reports
    assert read_checkpoint(tmp_path / "ddp" / LAST_CHECKPOINT)["params"]["batch_size"] == 8
    train(train_options(decoded_synthetic, tmp_path / "single"))
    single, ddp = weights(tmp_path / "single" / LAST_CHECKPOINT), weights(tmp_path / "ddp" / LAST_CHECKPOINT)
    differences = relative_update_differences(train_options(decoded_synthetic, tmp_path / "x"), single, ddp)
    assert max(differences.values()) < 1e-2, sorted(differences.items(), key=lambda item: -item[1])[:3]
    histories = [json.loads((tmp_path / run / "history.json").read_text()) for run in ("single", "ddp")]
    assert [r["loss"] for r in histories[0]] == pytest.approx([r["loss"] for r in histories[1]], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("accum_steps", [1, 2])
def test_two_process_gradients_equal_one_process_on_the_same_global_batch(decoded_synthetic, tmp_path, accum_steps):
    """The gradients the optimiser sees, not its updates (AdamW's update hides a gradient's scale, gradient
    clipping does not): under torchrun with 2 gloo processes they equal one process's on the same global
    batch of 8, for the towers, the seqTransf head and the logit scale, with and without accumulation.

    open_clip's all-gather passes each rank the sum of every rank's gradient of its features (2x the
    one-process gradient there); DDP's mean over ranks divides it out. Measured: equal to 1e-7 relative.
    """
    data = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    for processes in (1, 2):
        torchrun(processes, "tests/gradient_probe.py", *data, tmp_path / f"{processes}.pt", accum_steps)
    single, ddp = (torch.load(tmp_path / f"{processes}.pt") for processes in (1, 2))
    assert single.keys() == ddp.keys() and "clip.logit_scale" in single
    assert any(name.startswith("head.blocks.") for name in single)
    for name in single:
        scale = float(single[name].abs().max())
        assert scale > 0, name
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.slow
def test_two_process_embedding_equals_one_process(decoded_synthetic, tmp_path):
    """Each rank embeds every other video; rank 0 writes them back in manifest order."""
    common = [decoded_synthetic["frames"], "--manifest", decoded_synthetic["manifest"], "--model", MODEL]
    common += ["--pretrained", "none", "--split", "all", "--batch-size", "3"]
    ran = torchrun_two_processes("encode", "embed", *common, "--out", tmp_path / "ddp")
    assert ran.stdout.count("embed: 40 videos") == 1
    data = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    embed(EmbedOptions(*data, tmp_path / "single", model=MODEL, pretrained="none", split="all", progress=False))
    for name in ("videos.parquet", "texts.parquet"):
        single, ddp = (pq.read_table(tmp_path / run / name).to_pandas() for run in ("single", "ddp"))
        assert single["video_id"].tolist() == ddp["video_id"].tolist()
        assert np.allclose(np.stack(single["embedding"]), np.stack(ddp["embedding"]), atol=1e-6)


def test_embed_writes_unit_norm_embeddings_with_ids_and_counts(decoded_synthetic, tmp_path):
    """Also: a caption length given to training is kept in the checkpoints' spec and in the run parameters, and
    embedding cuts captions to it; --caption-length with --checkpoint is refused."""
    train(train_options(decoded_synthetic, tmp_path / "model", recipe={"epochs": 1}, caption_length=6))
    best = tmp_path / "model" / "best.pt"
    assert read_checkpoint(best)["spec"]["caption_length"] == 6
    assert read_checkpoint(tmp_path / "model" / LAST_CHECKPOINT)["params"]["caption_length"] == 6
    assert read_stage(tmp_path / "model")["params"]["caption_length"] == 6
    data = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    with pytest.raises(VidretError) as refused:
        EmbedOptions(*data, tmp_path / "refused", checkpoint=best, caption_length=8)
    message = str(refused.value)
    assert "\n" not in message and "--caption-length 8" in message and "trained with 6" in message, message
    summary = embed(
        EmbedOptions(
            frames_dir=decoded_synthetic["frames"], manifest=decoded_synthetic["manifest"], out=tmp_path / "emb",
            checkpoint=tmp_path / "model" / "best.pt", device="cpu", progress=False, batch_size=3,
        )
    )  # fmt: skip
    test = [entry for entry in read_manifest(decoded_synthetic["manifest"]) if entry.split == "test"]
    decoded = [entry for entry in test if not entry.video_id.startswith("lost")]
    videos, texts = (pq.read_table(tmp_path / "emb" / name).to_pandas() for name in ("videos.parquet", "texts.parquet"))
    assert videos["video_id"].tolist() == [entry.video_id for entry in decoded]
    assert texts["video_id"].tolist() == [entry.video_id for entry in decoded for _ in entry.captions]
    assert texts["caption"].tolist() == [caption for entry in decoded for caption in entry.captions]
    for table in (videos, texts):
        norms = np.linalg.norm(np.stack(table["embedding"].to_numpy()), axis=1)
        assert np.allclose(norms, 1, atol=1e-5)
        assert len(table["embedding"][0]) == 32
    assert summary.skipped == {"missing": 1}
    assert "1 videos skipped (1 missing)" in summary.line()
    stage = json.loads((tmp_path / "emb" / "stage.json").read_text())
    assert stage["counts"] == {
        "videos": len(decoded), "clips": len(decoded), "texts": len(texts), "uncaptioned": 0, "skipped": {"missing": 1}
    }  # fmt: skip
    assert stage["model"]["head"] == "seqTransf" and stage["model"]["checkpoint"].endswith("best.pt")
    assert stage["model"]["caption_length"] == 6

    model, _ = load_model(best)
    cut, full = model.tokenize(texts["caption"].tolist()), open_clip.get_tokenizer(MODEL)(texts["caption"].tolist())
    assert (cut != full).any(dim=1).sum() > len(texts) // 2  # most synthetic captions are longer than 6 tokens
    with torch.no_grad():
        expected = model.eval().encode_text(cut).numpy()
    assert np.allclose(np.stack(texts["embedding"]), expected, atol=1e-5)


def test_embed_is_skipped_when_up_to_date_and_redone_when_inputs_or_options_change(decoded_synthetic, tmp_path):
    out = tmp_path / "emb"

    def run(**overrides):
        options = dict(model=MODEL, pretrained="none", device="cpu", progress=False) | overrides
        return embed(EmbedOptions(decoded_synthetic["frames"], decoded_synthetic["manifest"], out, **options))

    first = run()
    assert first.skip_reason is None and first.ran_because == ""
    assert read_stage(out)["model"]["caption_length"] is None
    written = (out / "videos.parquet").stat().st_mtime_ns
    again = run()
    assert again.skip_reason and again.line().startswith("embed: skipped, ") and "--force" in again.line()
    assert (out / "videos.parquet").stat().st_mtime_ns == written
    assert run(batch_size=3).ran_because == " (ran: its parameters changed (batch_size 64 -> 3))"
    assert run(batch_size=3, force=True).ran_because == " (ran: --force)"
    torch.manual_seed(1)
    torch.save(open_clip.create_model(MODEL).state_dict(), tmp_path / "weights.pt")
    other_model = run(batch_size=3, pretrained=str(tmp_path / "weights.pt"))
    assert other_model.line().endswith(" (ran: its inputs changed)")
    cut = run(batch_size=3, pretrained=str(tmp_path / "weights.pt"), caption_length=6)
    assert cut.ran_because == " (ran: its inputs changed)" and read_stage(out)["model"]["caption_length"] == 6
    record = read_stage(out)["model"]
    assert (record["precision"], record["normalize_frames"], record["force_quick_gelu"]) == ("amp", True, False)
    raw_mean = run(batch_size=3, pretrained=str(tmp_path / "weights.pt"), caption_length=6, normalize_frames=False)
    assert raw_mean.ran_because == " (ran: its inputs changed)"
    assert read_stage(out)["model"]["normalize_frames"] is False


def test_zero_shot_options_are_refused_with_a_checkpoint(decoded_synthetic, tmp_path):
    """A checkpoint's spec fixes its precision and pooling: giving them too is a one-line error."""
    model = create_clip4clip(MODEL, "none", "meanP")
    save_checkpoint(tmp_path / "best.pt", model_state(model))
    data = decoded_synthetic["frames"], decoded_synthetic["manifest"], tmp_path / "emb"
    for option in ({"precision": "fp16"}, {"normalize_frames": False}):
        with pytest.raises(VidretError, match="are for zero-shot models; the checkpoint .* fixes them") as error:
            EmbedOptions(*data, checkpoint=tmp_path / "best.pt", **option)
        assert "\n" not in str(error.value)
    with pytest.raises(VidretError, match="--precision 'fp8': choose one of fp32, amp, fp16"):
        EmbedOptions(*data, model=MODEL, pretrained="none", precision="fp8")


def test_zero_shot_meanp_equals_direct_open_clip_on_a_saved_state_dict(decoded_synthetic, tmp_path):
    torch.manual_seed(7)
    clip = open_clip.create_model(MODEL)
    torch.save(clip.state_dict(), tmp_path / "weights.pt")
    embed(
        EmbedOptions(
            frames_dir=decoded_synthetic["frames"], manifest=decoded_synthetic["manifest"], out=tmp_path / "emb",
            model=MODEL, pretrained=str(tmp_path / "weights.pt"), head="meanP", device="cpu", progress=False,
        )
    )  # fmt: skip
    table = pq.read_table(tmp_path / "emb" / "videos.parquet").to_pandas()
    store = FrameStore(decoded_synthetic["frames"])
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    mean, std = (torch.tensor(preprocess[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    clip.eval()
    for video_id, embedding in zip(table["video_id"], table["embedding"], strict=True):
        pixels = torch.from_numpy(store.read(video_id).copy()).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            frames = F.normalize(clip.encode_image((pixels - mean) / std), dim=-1)
        expected = F.normalize(frames.mean(0), dim=0)
        assert torch.allclose(torch.tensor(embedding), expected, atol=1e-5), video_id


def test_prefetch_yields_every_batch_in_order(decoded_synthetic):
    store = FrameStore(decoded_synthetic["frames"])
    ids = sorted(store.locations)
    batches = [ids[start : start + 5] for start in range(0, len(ids), 5)]
    got = list(
        prefetch_batches(store, ([(video_id, 0) for video_id in batch] for batch in batches), threads=3, depth=2)
    )
    assert [len(batch.frames) for batch in got] == [len(batch) for batch in batches]
    for batch, video_ids in zip(got, batches, strict=True):
        assert batch.frames.dtype == torch.uint8 and tuple(batch.frames.shape[1:]) == (4, 32, 32, 3)
        assert batch.frame_mask is None  # uniform sampling never pads
        assert all(np.array_equal(batch.frames[i].numpy(), store.read(id_)) for i, id_ in enumerate(video_ids))


# -- errors -------------------------------------------------------------------------------------


def test_missing_frames_directory_is_a_clear_error(decoded_synthetic, tmp_path):
    with pytest.raises(VidretError, match="no such frames directory"):
        train(train_options({**decoded_synthetic, "frames": tmp_path / "nowhere"}, tmp_path / "model"))


def test_frames_from_another_manifest_are_refused(decoded_synthetic, tmp_path):
    records = [json.loads(line) for line in decoded_synthetic["manifest"].read_text().splitlines()]
    other = tmp_path / "other.jsonl"
    write_manifest(other, [record for record in records if record["video_id"] != records[0]["video_id"]])
    with pytest.raises(VidretError, match="manifest and frames disagree: .* videos the manifest does not list"):
        train(train_options({**decoded_synthetic, "manifest": other}, tmp_path / "model"))
    bigger = tmp_path / "bigger.jsonl"
    write_manifest(bigger, [*records, {**records[0], "video_id": "never-decoded", "split": "test"}])
    with pytest.raises(VidretError, match="manifest and frames disagree: 1 videos of the manifest were not decoded"):
        embed(EmbedOptions(decoded_synthetic["frames"], bigger, tmp_path / "emb", model=MODEL, pretrained="none"))


def test_a_split_with_no_decoded_video_is_an_error_that_counts_the_failures(decoded_synthetic, tmp_path):
    records = [json.loads(line) for line in decoded_synthetic["manifest"].read_text().splitlines()]
    only_lost = tmp_path / "only-lost.jsonl"
    decoded_test = {r["video_id"] for r in records if r["split"] == "test" and r["video_id"] != "lost-test"}
    # The decoded test videos move to val, so the test split keeps only its missing video.
    write_manifest(only_lost, [{**r, "split": "val"} if r["video_id"] in decoded_test else r for r in records])
    options = EmbedOptions(decoded_synthetic["frames"], only_lost, tmp_path / "emb", model=MODEL, pretrained="none")
    with pytest.raises(VidretError, match=r"no video of split 'test' decoded \(1 missing\)"):
        embed(options)
    assert not (tmp_path / "emb").exists()


def test_frame_size_must_match_the_model(decoded_synthetic, tmp_path):
    with pytest.raises(VidretError, match="frames are 32x32 but vidret-tiny takes 112x112; decode with --size 112"):
        train(train_options(decoded_synthetic, tmp_path / "model", model="vidret-tiny", head="meanP"))


def test_a_finished_run_is_skipped_when_up_to_date_and_replaced_when_not(decoded_synthetic, tmp_path):
    out = tmp_path / "model"
    train(train_options(decoded_synthetic, out, recipe={"epochs": 1}))
    before = (out / LAST_CHECKPOINT).read_bytes()
    again = train(train_options(decoded_synthetic, out, recipe={"epochs": 1}))
    assert again.skip_reason and "--force redoes it" in again.line() and again.steps == 0
    assert (out / LAST_CHECKPOINT).read_bytes() == before
    with pytest.raises(VidretError, match=r"--resume with other training parameters \(lr 0.001 -> 0.002"):
        train(train_options(decoded_synthetic, out, recipe={"epochs": 1, "lr": 2e-3}, resume=True))
    assert (out / LAST_CHECKPOINT).read_bytes() == before
    changed = train(train_options(decoded_synthetic, out, recipe={"epochs": 1, "lr": 2e-3}))
    assert changed.ran_because == " (ran: its parameters changed (lr 0.001 -> 0.002))" and changed.steps == 10
    assert "(ran: its parameters changed" in changed.line()
    assert read_stage(out)["params"]["lr"] == 2e-3


def test_an_unfinished_run_is_kept_unless_resumed_or_forced(decoded_synthetic, tmp_path):
    out = tmp_path / "model"
    train(train_options(decoded_synthetic, out, stop_after=2))
    before = (out / LAST_CHECKPOINT).read_bytes()
    with pytest.raises(VidretError, match="unfinished training run; --resume continues it, --force starts over"):
        train(train_options(decoded_synthetic, out))
    assert (out / LAST_CHECKPOINT).read_bytes() == before
    with pytest.raises(VidretError, match="--resume: .* does not exist"):
        train(train_options(decoded_synthetic, tmp_path / "fresh", resume=True))
    # The caption length shapes the weights: resuming with another is refused.
    with pytest.raises(VidretError, match=r"--resume with other training parameters \(caption_length None -> 6\)"):
        train(train_options(decoded_synthetic, out, resume=True, caption_length=6))
    assert (out / LAST_CHECKPOINT).read_bytes() == before
    assert train(train_options(decoded_synthetic, out, resume=True, stop_after=1)).steps == 1


def test_batch_size_must_split_evenly_and_fit_the_data(decoded_synthetic, tmp_path):
    with pytest.raises(VidretError, match="--batch-size 10 must divide evenly into --accum-steps 4"):
        Trainer(train_options(decoded_synthetic, tmp_path / "m", recipe={"batch_size": 10}, accum_steps=4), _one())
    with pytest.raises(VidretError, match="the train split has 84 caption-video pairs with frames, fewer than"):
        Trainer(train_options(decoded_synthetic, tmp_path / "m", recipe={"batch_size": 128}), _one())


def _one() -> World:
    return World(rank=0, size=1, device=torch.device("cpu"))


def test_every_recipe_file_loads_and_bad_ones_are_one_line_errors(tmp_path):
    """Each shipped recipe (recipes/*.json) loads with every field; a recipe file of one's own works by path;
    a file with a field missing, an unknown field, or a bad value is refused in one line naming it."""
    assert set(available_recipes()) >= {"mmaction2", "clip4clip", "demo"}
    for name in available_recipes():
        assert isinstance(make_recipe(name), Recipe)
    mine = tmp_path / "mine.json"
    fields = json.loads((RECIPES_DIR / "clip4clip.json").read_text())
    mine.write_text(json.dumps({**fields, "epochs": 2}))
    assert load_recipe(str(mine)).epochs == 2
    for broken, needle in (
        ({key: value for key, value in fields.items() if key != "eps"}, "missing: eps"),
        ({**fields, "momentum": 0.9}, "unknown: momentum"),
    ):
        mine.write_text(json.dumps(broken))
        with pytest.raises(VidretError, match=needle) as error:
            load_recipe(str(mine))
        assert "\n" not in str(error.value) and str(mine) in str(error.value)
    mine.write_text(json.dumps({**fields, "precision": "fp8"}))
    with pytest.raises(VidretError, match="--precision"):
        make_recipe(str(mine))
    # fp16 moments: MMAction2's eps (1e-8) is 0 there and made NaN weights in the first step.
    with pytest.raises(VidretError, match="--eps 1e-08 is 0") as error:
        make_recipe("mmaction2", precision="fp16")
    assert "\n" not in str(error.value)
    assert make_recipe("mmaction2", precision="fp16", eps=1e-6).eps == 1e-6
    with pytest.raises(VidretError, match="unknown recipe 'nope'"):
        make_recipe("nope")


@pytest.mark.parametrize("recipe", ["mmaction2", "clip4clip"])
def test_reference_recipes_train_with_their_optimiser_precision_and_frozen_stem(decoded_synthetic, tmp_path, recipe):
    """One epoch with each reference recipe, as shipped but for the batch: MMAction2's AdamW in fp32, and
    CLIP4Clip's BertAdam with fp16 towers (on the CPU too). Both freeze CLIP's embeddings and stem, which stay
    exactly as initialised while the rest trains; stage.json lists them; the loss stays finite."""
    options = train_options(decoded_synthetic, tmp_path / "m", recipe={"epochs": 1})
    options = replace(options, recipe=make_recipe(recipe, epochs=1, batch_size=8), recipe_name=recipe)
    initial = Trainer(options, _one()).model.state_dict()
    summary = train(options)
    assert np.isfinite(summary.last_loss)
    trained = weights(tmp_path / "m" / LAST_CHECKPOINT)
    stage = read_stage(tmp_path / "m")
    frozen = set(stage["frozen_parameters"])
    assert frozen == {
        "clip.positional_embedding", "clip.token_embedding.weight", "clip.visual.class_embedding",
        "clip.visual.positional_embedding", "clip.visual.conv1.weight", "clip.visual.ln_pre.weight",
        "clip.visual.ln_pre.bias",
    }  # fmt: skip
    assert all(torch.equal(trained[name], initial[name]) for name in frozen)
    assert not torch.equal(trained["head.blocks.0.mlp.c_fc.weight"], initial["head.blocks.0.mlp.c_fc.weight"])
    half = trained["clip.visual.transformer.resblocks.0.mlp.c_fc.weight"].dtype == torch.float16
    assert half == (recipe == "clip4clip")


def test_training_reads_train_view_epoch_mod_k(decoded_variants, tmp_path):
    """Decoded with 3 train views, epoch e trains on view e mod 3 of every video (new frames each epoch, as
    MMAction2's train-mode sampling); validation reads the val videos' one test-mode view."""
    data = {"frames": decoded_variants["views"], "manifest": decoded_variants["manifest"]}
    trainer = Trainer(train_options(data, tmp_path / "m", recipe={"batch_size": 4}), _one())
    assert trainer.train_views == 3 and trainer.input_record["train_views"] == 3
    for epoch in range(4):
        trainer.epoch = epoch
        batches = trainer.epoch_batches()
        frames, _ = next(batches)
        batches.close()
        order = epoch_order(0, epoch, trainer.units)[:4]
        ids = [trainer.video_ids[i] for i in order]
        expected = np.stack([trainer.store.read(video_id, epoch % 3) for video_id in ids])
        assert np.array_equal(frames.frames.numpy(), expected)
    video_id = trainer.video_ids[0]
    views = [trainer.store.read(video_id, view) for view in range(3)]
    assert not np.array_equal(views[0], views[1]) and not np.array_equal(views[1], views[2])
    assert all(trainer.store.num_views(entry.video_id) == 1 for entry in trainer.val)


def test_padded_frames_are_masked_in_training_and_embedding(decoded_variants, tmp_path):
    """CLIP4Clip's sampling pads clips shorter than T seconds; training and embedding mask the padding, so a
    padded clip's embedding is the model's feature of its real frames alone."""
    data = {"frames": decoded_variants["clip4clip"], "manifest": decoded_variants["manifest"]}
    store = FrameStore(data["frames"])
    real = {video_id: views[0].real_frames for video_id, views in store.locations.items()}
    assert min(real.values()) < 4 and max(real.values()) == 4  # padded and whole clips
    train(train_options(data, tmp_path / "model", recipe={"epochs": 1, "batch_size": 4}))
    embed(EmbedOptions(data["frames"], data["manifest"], tmp_path / "embeddings",
                       checkpoint=tmp_path / "model" / "best.pt", split="all", progress=False))  # fmt: skip
    model, _ = load_model(tmp_path / "model" / "best.pt")
    table = pq.read_table(tmp_path / "embeddings" / "videos.parquet").to_pylist()
    padded = [row for row in table if real[row["video_id"]] < 4]
    with torch.no_grad():
        for row in padded[:3]:
            frames = torch.from_numpy(store.read(row["video_id"]).copy())[None, : real[row["video_id"]]]
            torch.testing.assert_close(torch.tensor(row["embedding"]), model.eval().encode_video(frames)[0],
                                       rtol=1e-5, atol=1e-6)  # fmt: skip


def test_a_3d_linear_patch_trains_under_a_frozen_stem_resumes_exactly_and_embeds(decoded_synthetic, tmp_path):
    """MMAction2's recipe freezes CLIP's stem; the 3d patch, a new layer, trains (CLIP4Clip keeps its conv2
    trainable). A stopped 3d run resumes to the uninterrupted one's weights; the parameters record the patch,
    so resuming with the 2d one is refused; best.pt embeds with the 3d tower."""

    def options(out, **overrides):
        chosen = train_options(decoded_synthetic, out, linear_patch="3d", **overrides)
        return replace(chosen, recipe=make_recipe("mmaction2", epochs=2, batch_size=8), recipe_name="mmaction2")

    initial = Trainer(options(tmp_path / "init"), _one()).model.state_dict()
    train(options(tmp_path / "whole"))
    trained = weights(tmp_path / "whole" / LAST_CHECKPOINT)
    stage = read_stage(tmp_path / "whole")
    assert stage["params"]["linear_patch"] == "3d"
    assert "clip.visual.conv1.weight" not in stage["frozen_parameters"]
    assert "clip.visual.class_embedding" in stage["frozen_parameters"]
    assert trained["clip.visual.conv1.weight"][:, :, 0].abs().max() > 0  # the neighbours' slices learnt
    assert torch.equal(trained["clip.visual.class_embedding"], initial["clip.visual.class_embedding"])

    train(options(tmp_path / "split", stop_after=4))
    with pytest.raises(
        VidretError, match=r"--resume with other training parameters \(linear_patch '3d' -> \(not recorded\)\)"
    ):
        train(replace(options(tmp_path / "split", resume=True), linear_patch="2d"))
    train(options(tmp_path / "split", resume=True))
    resumed = weights(tmp_path / "split" / LAST_CHECKPOINT)
    assert all(torch.equal(trained[name], resumed[name]) for name in trained)

    data = decoded_synthetic["frames"], decoded_synthetic["manifest"]
    embed(EmbedOptions(*data, tmp_path / "emb", checkpoint=tmp_path / "whole" / "best.pt", progress=False))
    assert read_stage(tmp_path / "emb")["model"]["linear_patch"] == "3d"
    assert "linear_patch" not in train_options(decoded_synthetic, tmp_path / "x").run_params()  # 2d: as before


def test_fine_tuning_starts_from_a_pretrained_vidret_checkpoint(decoded_synthetic, decoded_variants, tmp_path):
    """Post-pretraining, then fine-tuning: meanP trained on one synthetic set starts runs on another. The same
    head loads whole; seqTransf, a new head, is made on the loaded towers (its blocks copy their text layers);
    a 2d patch becomes the 3d one, giving the same features at step 0. The record names what was loaded, and
    the checkpoint's digest replaces the CLIP weights in the parameters."""
    train(train_options(decoded_synthetic, tmp_path / "pre", head="meanP"))
    source = weights(tmp_path / "pre" / "best.pt")
    other = {"frames_dir": decoded_variants["views"], "manifest": decoded_variants["manifest"]}

    def fine_tuning(out, **overrides):
        return replace(train_options(decoded_synthetic, out, init_from=tmp_path / "pre" / "best.pt"), **other,
                       **overrides)  # fmt: skip

    same = Trainer(fine_tuning(tmp_path / "same", head="meanP"), _one()).model.state_dict()
    different = [name for name in source if not torch.equal(same[name], source[name])]
    assert not different and same.keys() == source.keys()

    new_head = Trainer(fine_tuning(tmp_path / "new"), _one()).model
    assert all(torch.equal(new_head.state_dict()[name], tensor) for name, tensor in source.items())
    text_layer = new_head.clip.transformer.resblocks[0].mlp.c_fc.weight
    assert torch.equal(new_head.head.blocks[0].mlp.c_fc.weight, text_layer.float())
    assert torch.equal(text_layer, source["clip.transformer.resblocks.0.mlp.c_fc.weight"])

    store = FrameStore(decoded_variants["views"])
    frames = torch.from_numpy(store.read(next(iter(store.locations))))[None]
    pretrained, _ = load_model(tmp_path / "pre" / "best.pt")
    deep = Trainer(fine_tuning(tmp_path / "deep", head="meanP", linear_patch="3d"), _one()).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(deep.encode_video(frames), pretrained.eval().encode_video(frames), atol=1e-6, rtol=0)

    summary = train(fine_tuning(tmp_path / "tuned"))
    assert summary.steps > 0
    stage = read_stage(tmp_path / "tuned")
    assert stage["init_from"] == {
        "checkpoint": str((tmp_path / "pre" / "best.pt").absolute()), "head": "meanP",
        "loaded": "towers; a new seqTransf head", "sha256": sha256_file(tmp_path / "pre" / "best.pt"),
    }  # fmt: skip
    assert stage["params"]["init_from"] == stage["init_from"]["sha256"] and "pretrained" not in stage["params"]
    assert read_checkpoint(tmp_path / "tuned" / "best.pt")["spec"]["head"] == "seqTransf"


def test_init_from_refuses_what_is_not_well_defined(decoded_synthetic, tmp_path):
    """Another model, a 3d patch into a 2d tower, a missing file: one line each, before any training."""
    train(train_options(decoded_synthetic, tmp_path / "deep", head="meanP", linear_patch="3d", recipe={"epochs": 1}))
    best = tmp_path / "deep" / "best.pt"
    with pytest.raises(VidretError, match=r"its tower has the 3d linear patch; pass --linear-patch 3d$"):
        train(train_options(decoded_synthetic, tmp_path / "a", init_from=best))
    with pytest.raises(VidretError, match=r"a vidret-micro checkpoint, and this run builds vidret-tiny \(pass --model"):
        train(train_options(decoded_synthetic, tmp_path / "b", init_from=best, model="vidret-tiny", linear_patch="3d"))
    with pytest.raises(VidretError, match=r"^--init-from .*nowhere.pt: no such checkpoint$"):
        train_options(decoded_synthetic, tmp_path / "c", init_from=tmp_path / "nowhere.pt")
    for refused in ("a", "b"):  # nothing written but the stage's lock file
        assert [path.name for path in (tmp_path / refused).iterdir()] == [".vidret.lock"]
