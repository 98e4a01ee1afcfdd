"""The ``vidret`` command line: each command parses options and calls one library function."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Annotated

import typer

from pipeline import defaults
from pipeline.decode.clips import DEFAULT_SHOT_SECONDS
from pipeline.decode.reader import FrameSpec
from pipeline.decode.run import DecodeOptions
from pipeline.errors import VidretError
from pipeline.scan import SCAN_SPLIT
from pipeline.synth import SynthOptions


def default_of(options: type, name: str):
    """The default of field ``name`` of the options dataclass ``options`` (a default_factory is called).
    Every default the CLI shows comes from the library: these light dataclasses, or pipeline/defaults.py for
    the ones whose modules import torch or open_clip (TrainOptions, EmbedOptions, IndexOptions)."""
    (field,) = [field for field in dataclasses.fields(options) if field.name == name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


# The library's defaults of the options a --dataset preset can set (pipeline/datasets/presets.py), per stage.
# Their flags default to None, so that a command tells a flag given from one left out.
LIBRARY_DEFAULTS = {
    "decode": {
        "frames": default_of(FrameSpec, "num_frames"),
        "size": default_of(FrameSpec, "size"),
        "short_side": default_of(FrameSpec, "short_side"),
        "sampling": default_of(FrameSpec, "sampling"),
        "interpolation": default_of(FrameSpec, "interpolation"),
        "train_views": default_of(DecodeOptions, "train_views"),
    },
    # caption_length None: the model's full context length (ModelSpec's).
    "train": {
        "model": defaults.MODEL,
        "pretrained": defaults.PRETRAINED,
        "caption_length": None,
        "recipe": defaults.RECIPE,
    },
    "embed": {
        "model": defaults.MODEL,
        "pretrained": defaults.PRETRAINED,
        "caption_length": None,
        "split": defaults.EMBED_SPLIT,
    },
    "index": {},
}


def shown(stage: str, name: str) -> str:
    """The library's default of a preset-able option, as --help shows it."""
    return f"{LIBRARY_DEFAULTS[stage][name]}, or --dataset's"


def stage_options(stage: str, dataset: str | None, ignore: tuple[str, ...] = (), **given) -> dict:
    """The values of ``stage``'s preset-able options: ``{**library defaults, **preset_options(dataset, stage),
    **given flags (not None)}``, so a flag given wins over the --dataset preset, and the preset over the
    library's defaults; the preset's options in ``ignore`` are left out. An unknown dataset is a DatasetError."""
    from pipeline.datasets.presets import preset_options

    preset = {name: value for name, value in preset_options(dataset, stage).items() if name not in ignore}
    return {**LIBRARY_DEFAULTS[stage], **preset, **{name: value for name, value in given.items() if value is not None}}


app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="vidret: an offline video-text retrieval pipeline (decode -> encode -> index).",
)
manifest_app = typer.Typer(no_args_is_help=True, help="Build and check manifests (JSON Lines, one video per line).")
app.add_typer(manifest_app, name="manifest")
encode_app = typer.Typer(no_args_is_help=True, help="Train the CLIP4Clip video tower and write embeddings.")
app.add_typer(encode_app, name="encode")

# Options shared by `encode train` and `encode embed`.
FramesDir = Annotated[Path, typer.Argument(help="Decoded frames (RUN/frames), as written by vidret decode.")]
ManifestOption = Annotated[Path, typer.Option(help="The manifest the frames were decoded from (.jsonl).")]
DatasetOption = Annotated[
    str | None,
    typer.Option(
        help="A benchmark (vidret manifest datasets lists them): its definition's defaults replace the"
        " library's for the options whose default says --dataset's; a flag given still wins.",
        show_default=False,
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        help="open_clip model name; vidret-tiny and vidret-micro run on a CPU.",
        show_default=shown("train", "model"),
    ),
]
PretrainedOption = Annotated[
    str | None,
    typer.Option(
        help="CLIP weights: an open_clip tag (downloaded when online), a local file, or none.",
        show_default=shown("train", "pretrained"),
    ),
]
HeadOption = Annotated[str, typer.Option(help="Temporal head: meanP, seqLSTM or seqTransf.")]
CaptionLengthOption = Annotated[
    int | None,
    typer.Option(
        help="Tokens per caption, SOT and EOT included (CLIP4Clip's max_words: 32; 64 for paragraphs);"
        " default: the model's context length, or --dataset's.",
        show_default=False,
    ),
]
VideoRootOption = Annotated[
    Path | None, typer.Option(help="Resolve relative video paths here, not next to the manifest.")
]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")]
WorkersOption = Annotated[int, typer.Option(help="Threads reading frames from Parquet, per process.")]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar.")]
PrecisionOption = Annotated[
    str | None,
    typer.Option(
        help="fp32; amp (bf16 autocast on CUDA, fp32 on the CPU); fp16 (OpenAI's half-precision CLIP).",
        show_default=False,
    ),
]
NormalizeFramesOption = Annotated[
    bool | None,
    typer.Option(
        "--normalize-frames/--no-normalize-frames",
        help="L2-normalise each frame feature before the mean (CLIP4Clip) or not (MMAction2).",
        show_default=False,
    ),
]


def reports_errors(command):
    """Print a VidretError as one line and exit 1; Ctrl-C exits 130 without a traceback. An OSError no check
    caught (the disk filled up, ...) is one line too, ``error: PATH: strerror``, and exits 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except VidretError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        except OSError as error:
            from pipeline.errors import os_error_line

            typer.echo(f"error: {os_error_line(error)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: finished work is kept; run the same command again to continue", err=True)
            raise typer.Exit(130) from None

    return wrapper


@manifest_app.command("check")
@reports_errors
def manifest_check(
    manifest: Annotated[Path, typer.Argument(help="The manifest file (.jsonl).")],
    video_root: Annotated[
        Path | None, typer.Option(help="Resolve relative video paths here, not next to the manifest.")
    ] = None,
) -> None:
    """Validate a manifest; report videos per split and missing video files."""
    from pipeline.manifest import describe_manifest, read_manifest

    typer.echo(f"{manifest}: ok, {describe_manifest(read_manifest(manifest, video_root))}")


@manifest_app.command("build")
@reports_errors
def manifest_build(
    dataset: Annotated[str, typer.Argument(help="A benchmark vidret knows (vidret manifest datasets lists them).")],
    annotations: Annotated[Path, typer.Option(help="The folder holding the benchmark's annotation files.")],
    videos: Annotated[Path, typer.Option(help="The folder holding its videos (searched recursively).")],
    out: Annotated[Path | None, typer.Option(help="The manifest to write; default manifests/DATASET.jsonl.")] = None,
    show: Annotated[int, typer.Option(help="Problems printed per kind; the build report lists them all.")] = 5,
) -> None:
    """Build a manifest from a benchmark's official annotation files; report every problem per video."""
    from pipeline.datasets import build_manifest

    summary = build_manifest(dataset, annotations, videos, out)
    for line in summary.problem_lines(show):
        typer.echo(line, err=True)
    typer.echo(summary.line())


@manifest_app.command("scan")
@reports_errors
def manifest_scan(
    video_dir: Annotated[Path, typer.Argument(help="The folder of videos (searched recursively).")],
    out: Annotated[
        Path, typer.Option(help="The manifest to write; an existing one keeps its entries and gains the new files.")
    ],
    split: Annotated[str, typer.Option(help="The split of the new entries: train, val or test.")] = SCAN_SPLIT,
    show: Annotated[int, typer.Option(help="Problems printed (unreadable folders, broken links, ...).")] = 5,
) -> None:
    """Write a caption-free manifest of every video file under a folder; the ids are the files' relative paths."""
    from pipeline.scan import scan_videos

    summary = scan_videos(video_dir, out, split)
    for line in summary.problem_lines(show):
        typer.echo(line, err=True)
    typer.echo(summary.line())


@manifest_app.command("datasets")
@reports_errors
def manifest_datasets() -> None:
    """List the benchmarks vidret can build manifests for, with their annotation files and defaults."""
    from pipeline.datasets import available_datasets, load_definition

    for name in available_datasets():
        definition = load_definition(name)
        defaults = definition.defaults
        typer.echo(
            f"{name}: {definition.title}\n"
            f"    splits {', '.join(definition.splits())}; {defaults['frames']} frames at {defaults['size']}^2,"
            f" captions of {defaults['caption_length']} tokens, recipe {defaults['recipe']}"
        )
        for layout in definition.layouts:
            typer.echo(f"    {layout.name} layout: {', '.join(layout.files.values())}")


@app.command()
@reports_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder: videos/, manifest.jsonl, synth.json.")],
    videos: Annotated[int, typer.Option(help="Number of videos (20% test, 10% val, the rest train).")] = default_of(
        SynthOptions, "videos"
    ),
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = default_of(
        SynthOptions, "seed"
    ),
    twins: Annotated[
        bool,
        typer.Option(
            help="Clips in pairs told apart only by the order of their frames (the twin plays backwards, in the"
            " opposite direction), in one split and one training batch: mean pooling's ceiling is half the test"
            " clips."
        ),
    ] = default_of(SynthOptions, "twins"),
    force: Annotated[bool, typer.Option(help="Replace a dataset made with other options.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Write the built-in synthetic dataset: H.264 clips of moving shapes, with captions."""
    from pipeline.synth import make_synthetic_dataset

    options = SynthOptions(videos=videos, seed=seed, twins=twins)
    summary = make_synthetic_dataset(out, options, force=force, progress=progress)
    typer.echo(summary.line())


@app.command()
@reports_errors
def decode(
    manifest: Annotated[Path, typer.Argument(help="The manifest file (.jsonl).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder, conventionally RUN/frames.")],
    dataset: DatasetOption = None,
    split: Annotated[str, typer.Option(help="all, or one or more of train,val,test (comma-separated).")] = default_of(
        DecodeOptions, "split"
    ),
    frames: Annotated[
        int | None,
        typer.Option(help="Frames sampled per video.", show_default=shown("decode", "frames")),
    ] = None,
    size: Annotated[
        int | None, typer.Option(help="Side of the square centre crop (pixels).", show_default=shown("decode", "size"))
    ] = None,
    short_side: Annotated[
        int | None,
        typer.Option(
            help="Resize the short side to this before cropping (CLIP4Clip: the crop size).",
            show_default="size x 256/224, as MMAction2; or --dataset's",
        ),
    ] = None,
    sampling: Annotated[
        str | None,
        typer.Option(
            help="uniform (MMAction2 UniformSample, test mode), linspace (evenly over the whole video),"
            " clip4clip (one frame per second, then T of them evenly: CLIP4Clip's --slice_framepos 2)"
            " or clip4clip-head (one per second, the first T: --slice_framepos 0).",
            show_default=shown("decode", "sampling"),
        ),
    ] = None,
    interpolation: Annotated[
        str | None,
        typer.Option(
            help="The resize filter: bilinear (MMAction2) or bicubic (CLIP4Clip; --decoder pyav only).",
            show_default=shown("decode", "interpolation"),
        ),
    ] = None,
    train_views: Annotated[
        int | None,
        typer.Option(
            help="Store this many train-mode draws (MMAction2 UniformSample) of each train video, one row each;"
            " 0: one test-mode row, as for val and test. Needs --sampling uniform.",
            show_default=shown("decode", "train_views"),
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --train-views draws.")] = default_of(DecodeOptions, "seed"),
    clip_seconds: Annotated[
        float | None,
        typer.Option(
            help="Cut every video into clips of this many seconds, each sampled as --frames frames of its own"
            " (one row each); with --clip-shots, the longest clip a shot becomes.",
            show_default=f"the whole video is one clip; {DEFAULT_SHOT_SECONDS:g} with --clip-shots",
        ),
    ] = None,
    clip_stride: Annotated[
        float | None,
        typer.Option(
            help="Seconds from one --clip-seconds window's start to the next's (shorter: overlapping windows).",
            show_default="--clip-seconds",
        ),
    ] = None,
    clip_shots: Annotated[
        bool, typer.Option(help="Cut clips at shot boundaries (PySceneDetect), long shots into --clip-seconds.")
    ] = default_of(FrameSpec, "clip_shots"),
    decoder: Annotated[
        str,
        typer.Option(
            help="pyav (decodes only what the sampled frames need) or decord (to match frames it decoded before)."
        ),
    ] = default_of(FrameSpec, "decoder"),
    frame_format: Annotated[
        str,
        typer.Option(
            help="How part files store the frames: raw (uint8 arrays) or jpeg (one JPEG per frame, about 10x"
            " smaller at quality 90 on camera-like frames; encode decodes them as it reads)."
        ),
    ] = default_of(FrameSpec, "frame_format"),
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality, 1-100, with --frame-format jpeg.")] = default_of(
        FrameSpec, "jpeg_quality"
    ),
    workers: Annotated[
        int | None, typer.Option(help="Decoder processes.", show_default="one per available core")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds per video before its decoder process is killed.")
    ] = default_of(DecodeOptions, "timeout"),
    shard_size: Annotated[
        int, typer.Option(help="Videos per Parquet part file (the unit of resumption).")
    ] = default_of(DecodeOptions, "shard_size"),
    num_shards: Annotated[
        int, typer.Option(help="Split the work over this many independent runs (machines).")
    ] = default_of(DecodeOptions, "num_shards"),
    shard_index: Annotated[int, typer.Option(help="Which of the --num-shards runs this is, from 0.")] = default_of(
        DecodeOptions, "shard_index"
    ),
    video_root: Annotated[
        Path | None, typer.Option(help="Resolve relative video paths here, not next to the manifest.")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Delete what an earlier decode wrote to --out and start again.")
    ] = default_of(DecodeOptions, "force"),
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Sample frames uniformly from every video, or from every clip of it, and write them to Parquet shards."""
    from pipeline.decode import decode_videos

    chosen = stage_options(
        "decode", dataset, frames=frames, size=size, short_side=short_side, sampling=sampling,
        interpolation=interpolation, train_views=train_views,
    )  # fmt: skip
    options = DecodeOptions(
        spec=FrameSpec(
            num_frames=chosen["frames"],
            size=chosen["size"],
            short_side=chosen["short_side"],
            sampling=chosen["sampling"],
            decoder=decoder,
            interpolation=chosen["interpolation"],
            frame_format=frame_format,
            jpeg_quality=jpeg_quality,
            clip_seconds=clip_seconds,
            clip_stride=clip_stride,
            clip_shots=clip_shots,
        ),
        split=split,
        shard_size=shard_size,
        **({} if workers is None else {"workers": workers}),  # DecodeOptions' default: one per available core
        timeout=timeout,
        num_shards=num_shards,
        shard_index=shard_index,
        video_root=video_root,
        force=force,
        train_views=chosen["train_views"],
        seed=seed,
    )
    typer.echo(decode_videos(manifest, out, options, progress=progress).line())


@encode_app.command("train")
@reports_errors
def encode_train(
    frames_dir: FramesDir,
    manifest: ManifestOption,
    out: Annotated[Path, typer.Option("--out", help="Output folder, conventionally RUN/model.")],
    dataset: DatasetOption = None,
    model: ModelOption = None,
    pretrained: PretrainedOption = None,
    head: HeadOption = defaults.HEAD,
    caption_length: CaptionLengthOption = None,
    linear_patch: Annotated[
        str,
        typer.Option(
            help="2d: each frame's patches alone; 3d: CLIP4Clip's patches 3 frames deep (a ViT tower, started as 2d)."
        ),
    ] = defaults.LINEAR_PATCH,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Start from a vidret checkpoint (RUN/model/best.pt): its towers, and its head if the same kind;"
            " --pretrained is then unused."
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="mmaction2, clip4clip, demo, or a recipe .json file: the defaults of the options below.",
            show_default=shown("train", "recipe"),
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Passes over every (video, caption) pair of train.", show_default="recipe")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Global batch: all processes and accumulation steps.", show_default="recipe")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Learning rate of new modules (and of CLIP unless --clip-lr).", show_default="recipe"),
    ] = None,
    clip_lr: Annotated[
        float | None, typer.Option(help="Learning rate of the CLIP towers.", show_default="recipe")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="AdamW weight decay (none on biases and norms).", show_default="recipe")
    ] = None,
    warmup: Annotated[
        float | None,
        typer.Option(help="Warm-up, as a fraction of all steps; cosine decay after.", show_default="recipe"),
    ] = None,
    warmup_start: Annotated[float | None, typer.Option(help="LR factor at step 0.", show_default="recipe")] = None,
    beta1: Annotated[float | None, typer.Option(help="AdamW beta1.", show_default="recipe")] = None,
    beta2: Annotated[float | None, typer.Option(help="AdamW beta2.", show_default="recipe")] = None,
    eps: Annotated[float | None, typer.Option(help="AdamW epsilon.", show_default="recipe")] = None,
    grad_clip: Annotated[
        float | None, typer.Option(help="Max gradient norm; 0 for none.", show_default="recipe")
    ] = None,
    freeze_layers: Annotated[
        int | None,
        typer.Option(
            help="Freeze CLIP's embeddings and its first N blocks per tower; -1: none.", show_default="recipe"
        ),
    ] = None,
    precision: PrecisionOption = None,
    normalize_frames: NormalizeFramesOption = None,
    accum_steps: Annotated[
        int, typer.Option(help="Split each batch into this many micro-batches (exact loss).")
    ] = defaults.ACCUM_STEPS,
    seed: Annotated[int, typer.Option(help="Seeds the initialisation and the data order.")] = defaults.TRAIN_SEED,
    deterministic: Annotated[bool, typer.Option(help="Deterministic kernels (slower on GPUs).")] = False,
    save_every: Annotated[
        int, typer.Option(help="Steps between mid-epoch checkpoints; 0: at epoch ends only.")
    ] = defaults.SAVE_EVERY,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop after this many steps with a checkpoint (for time-limited jobs).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last.pt.")] = False,
    force: Annotated[bool, typer.Option(help="Start over, replacing the run in --out.")] = False,
    video_root: VideoRootOption = None,
    device: DeviceOption = defaults.DEVICE,
    workers: WorkersOption = defaults.READ_WORKERS,
    progress: ProgressOption = True,
) -> None:
    """Train CLIP4Clip on the train split, validating on val each epoch. Runs under torchrun for DDP."""
    chosen = stage_options(
        "train", dataset, model=model, pretrained=pretrained, caption_length=caption_length, recipe=recipe
    )
    from pipeline.encode.train import TrainOptions, make_recipe, train

    options = TrainOptions(
        frames_dir=frames_dir,
        manifest=manifest,
        out=out,
        model=chosen["model"],
        pretrained=chosen["pretrained"],
        head=head,
        caption_length=chosen["caption_length"],
        linear_patch=linear_patch,
        init_from=init_from,
        recipe=make_recipe(
            chosen["recipe"], epochs=epochs, batch_size=batch_size, lr=lr, clip_lr=clip_lr, weight_decay=weight_decay,
            warmup=warmup, warmup_start=warmup_start, beta1=beta1, beta2=beta2, eps=eps, grad_clip=grad_clip,
            freeze_layers=freeze_layers, precision=precision, normalize_frames=normalize_frames,
        ),
        recipe_name=chosen["recipe"],
        accum_steps=accum_steps,
        seed=seed,
        deterministic=deterministic,
        video_root=video_root,
        device=device,
        workers=workers,
        save_every=save_every,
        stop_after=stop_after,
        resume=resume,
        force=force,
        progress=progress,
    )  # fmt: skip
    summary = train(options)
    if summary.is_main:
        typer.echo(summary.line())


@encode_app.command("embed")
@reports_errors
def encode_embed(
    frames_dir: FramesDir,
    manifest: ManifestOption,
    out: Annotated[Path, typer.Option("--out", help="Output folder, conventionally RUN/embeddings.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="A vidret checkpoint (RUN/model/best.pt); without it, zero-shot CLIP.")
    ] = None,
    dataset: DatasetOption = None,
    model: ModelOption = None,
    pretrained: PretrainedOption = None,
    head: HeadOption = defaults.HEAD,
    caption_length: CaptionLengthOption = None,
    precision: PrecisionOption = None,
    normalize_frames: NormalizeFramesOption = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="all, or one or more of train,val,test (comma-separated); --dataset's is its test split.",
            show_default=shown("embed", "split"),
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Videos per forward pass, per process.")] = defaults.EMBED_BATCH_SIZE,
    video_root: VideoRootOption = None,
    device: DeviceOption = defaults.DEVICE,
    workers: WorkersOption = defaults.READ_WORKERS,
    force: Annotated[bool, typer.Option(help="Embed again even if --out is up to date.")] = False,
    progress: ProgressOption = True,
) -> None:
    """Write L2-normalised video and caption embeddings (videos.parquet, texts.parquet); skip if up to date."""
    from pipeline.datasets.presets import CHECKPOINT_FIXES

    # A checkpoint fixes the model: the preset sets only the zero-shot one's.
    ignore = CHECKPOINT_FIXES if checkpoint is not None else ()
    chosen = stage_options(
        "embed", dataset, ignore, model=model, pretrained=pretrained, caption_length=caption_length, split=split
    )
    from pipeline.encode.embed import EmbedOptions, embed

    options = EmbedOptions(
        frames_dir=frames_dir,
        manifest=manifest,
        out=out,
        checkpoint=checkpoint,
        model=chosen["model"],
        pretrained=chosen["pretrained"],
        head=head,
        caption_length=chosen["caption_length"],
        precision=precision,
        normalize_frames=normalize_frames,
        split=chosen["split"],
        video_root=video_root,
        batch_size=batch_size,
        workers=workers,
        device=device,
        force=force,
        progress=progress,
    )
    summary = embed(options)
    if summary.is_main:
        typer.echo(summary.line())


@app.command()
@reports_errors
def index(
    embeddings: Annotated[
        Path, typer.Argument(help="Embeddings (RUN/embeddings): videos.parquet and texts.parquet, ours or yours.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder, conventionally RUN/index.")],
    dataset: Annotated[
        str | None,
        typer.Option(
            help="A benchmark (vidret manifest datasets lists them); no index option depends on it today:"
            " accepted, and checked, as by the other stages.",
            show_default=False,
        ),
    ] = None,
    dsl: Annotated[
        bool, typer.Option(help="Also report dual-softmax re-weighted metrics, under their own label.")
    ] = False,
    dsl_scale: Annotated[
        float, typer.Option(help="Softmax scale of the dual-softmax prior.")
    ] = defaults.INDEX_DSL_SCALE,
    dump: Annotated[
        Path | None, typer.Option(help="Write a pickle with per-query ids, top-k, ranks and the features.")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Neighbours per query in the --dump file.")] = defaults.INDEX_TOP_K,
    block_size: Annotated[
        int, typer.Option(help="Queries per block of the similarity matrix (memory).")
    ] = defaults.INDEX_BLOCK_SIZE,
    index: Annotated[
        str,
        typer.Option(
            "--index",
            help="flat (exact), auto (by the number of vectors and --index-memory) or a FAISS index_factory"
            " string such as IVF1024,SQ8 or HNSW32; an approximate index's search is tuned to --recall.",
        ),
    ] = defaults.INDEX_TYPE,
    index_memory: Annotated[
        int | None,
        typer.Option(help="Bytes --index auto may fill.", show_default="a quarter of the physical memory"),
    ] = None,
    recall: Annotated[
        float, typer.Option(help="Recall@10 against exact search that an approximate index is tuned to reach.")
    ] = defaults.INDEX_RECALL,
    rerank: Annotated[
        Path | None,
        typer.Option(
            help="A pair head's checkpoint (--head tightTransf): re-score each query's top --rerank-k candidates"
            " with it, and report those metrics under their own label.",
            show_default=False,
        ),
    ] = None,
    rerank_k: Annotated[int, typer.Option(help="Candidates per query --rerank re-scores.")] = defaults.RERANK_K,
    device: DeviceOption = defaults.DEVICE,
    force: Annotated[bool, typer.Option(help="Recompute even if --out is up to date.")] = False,
    progress: ProgressOption = True,
) -> None:
    """Build the FAISS video index and score retrieval: metrics.json, ranks.parquet, videos.faiss."""
    stage_options("index", dataset)  # sets nothing today; an unknown name is an error, as for every stage
    from pipeline.index import IndexOptions, index_embeddings, metrics_table

    options = IndexOptions(
        top_k=top_k, dsl=dsl, dsl_scale=dsl_scale, dump=dump, block_size=block_size, index=index,
        index_memory=index_memory, recall=recall, device=device, force=force, progress=progress,
        rerank=rerank, rerank_k=rerank_k,
    )  # fmt: skip
    summary = index_embeddings(embeddings, out, options)
    for note in summary.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(metrics_table(summary.metrics))
    typer.echo(summary.line())


@app.command()
@reports_errors
def search(
    run: Annotated[Path, typer.Argument(help="A run folder holding index/ (or the index folder itself).")],
    queries: Annotated[list[str] | None, typer.Argument(help="Free-text queries.", show_default=False)] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Read queries from this file, one per line; - for stdin.")
    ] = None,
    k: Annotated[
        int, typer.Option("--k", help=f"Videos (clips, in an index of clips) per query, at most {defaults.MAX_K}.")
    ] = 5,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON object per hit and line: query, rank, score, video_id, clip_index, start_s, end_s, path.",
        ),
    ] = False,
    device: DeviceOption = "auto",
) -> None:
    """Find the videos (or the moments of them, in an index of clips) that best match free text."""
    import sys

    from pipeline.search import format_hits, hits_json, read_queries, search_videos

    queries = list(queries or [])
    if file is not None:
        queries += read_queries(file, sys.stdin)
    elif not queries and not sys.stdin.isatty():
        queries = read_queries("-", sys.stdin)
    for query, hits in zip(queries, search_videos(run, queries, k, device), strict=True):
        typer.echo(hits_json(query, hits) if as_json else format_hits(query, hits))


@app.command()
@reports_errors
def serve(
    run: Annotated[Path, typer.Argument(help="A run folder holding index/ (or the index folder itself).")],
    host: Annotated[
        str, typer.Option(help="The address to listen on; 0.0.0.0 shares the page with the network.")
    ] = defaults.SERVE_HOST,
    port: Annotated[int, typer.Option(help="The port; 0 picks a free one.")] = defaults.SERVE_PORT,
    device: DeviceOption = "auto",
) -> None:
    """A search page and JSON API over the run: thumbnails, moments that play in the page, and its report."""
    from pipeline.serve import serve as serve_run

    serve_run(run, host, port, device, echo=typer.echo)


@app.command()
@reports_errors
def report(
    run: Annotated[Path, typer.Argument(help="A run folder holding index/ (or the index folder itself).")],
) -> None:
    """Write RUN/report.html: metrics, training curves, decode counts, the worst queries, every stage's parameters."""
    from pipeline.report import write_report

    typer.echo(f"report: {write_report(run)} (one self-contained page; `vidret serve` shows it at /run)")


@app.command()
@reports_errors
def collection(
    video_dir: Annotated[Path, typer.Argument(help="Your folder of videos (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", help="The run folder: manifest.jsonl, frames/, embeddings/, index/.")],
    clip_seconds: Annotated[
        float, typer.Option(help="Cut every video into clips this long; each clip is a search hit.")
    ] = defaults.COLLECTION_CLIP_SECONDS,
    clip_stride: Annotated[
        float | None,
        typer.Option(help="Seconds from one clip's start to the next's (overlap when shorter).", show_default=False),
    ] = None,
    frames: Annotated[
        int | None, typer.Option(help="Frames sampled per clip.", show_default=str(default_of(FrameSpec, "num_frames")))
    ] = None,
    size: Annotated[
        int | None, typer.Option(help="Side of the square frames.", show_default="the model's input size")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Decoder processes.", show_default="one per available core")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="open_clip model for zero-shot embedding; vidret-tiny runs on a CPU.", show_default=defaults.MODEL
        ),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="CLIP weights: an open_clip tag (downloaded when online), a local file, or none.",
            show_default=defaults.PRETRAINED,
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="A trained run's RUN/model/best.pt, instead of zero-shot --model.")
    ] = None,
    device: DeviceOption = defaults.DEVICE,
    index: Annotated[
        str, typer.Option(help="auto (exact while that is fast, else approximate), flat, or a FAISS factory string.")
    ] = defaults.COLLECTION_INDEX,
    index_memory: Annotated[
        int | None,
        typer.Option(help="Bytes the index may take (--index auto).", show_default="a quarter of the memory"),
    ] = None,
    force: Annotated[bool, typer.Option(help="Redo every stage, even those up to date.")] = False,
    progress: ProgressOption = True,
) -> None:
    """Make a folder of your own videos searchable: scan, decode into clips, embed, index; then search it."""
    from pipeline.collection import CollectionOptions, make_collection

    options = CollectionOptions(
        clip_seconds=clip_seconds, clip_stride=clip_stride, frames=frames, size=size, workers=workers, model=model,
        pretrained=pretrained, checkpoint=checkpoint, device=device, index=index, index_memory=index_memory,
        force=force, progress=progress,
    )  # fmt: skip
    summary = make_collection(video_dir, out, options, report=typer.echo)
    typer.echo(summary.line())
    typer.echo(f"search it: {summary.search_command()}")


@app.command()
@reports_errors
def study(
    study: Annotated[
        str, typer.Argument(help="A study in pipeline/studies/ by name, or a study .json file of your own.")
    ] = defaults.STUDY,
    out: Annotated[Path, typer.Option(help="The study's folder: data, frames, one folder per run, the table.")] = Path(
        defaults.STUDY_OUT
    ),
    device: DeviceOption = defaults.DEVICE,
    progress: ProgressOption = True,
) -> None:
    """Train, embed and index every run of a study on the synthetic dataset; write its table and plot."""
    from pipeline.study import StudyOptions, run_study

    summary = run_study(StudyOptions(study=study, out=out, device=device, progress=progress), echo=typer.echo)
    typer.echo(summary.table)
    typer.echo(summary.line())


@app.command()
@reports_errors
def bench(
    out: Annotated[Path, typer.Option(help="Where the results go (JSON).")] = Path("bench.json"),
    only: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated parts to run: decode, encode, index, jpeg, ann, serve.", show_default="every part"
        ),
    ] = None,
    quick: Annotated[bool, typer.Option(help="Tiny sizes: checks that every part runs; not figures to quote.")] = False,
    progress: ProgressOption = True,
) -> None:
    """Measure every stage against its floor; write bench.json and print a table."""
    from pipeline.bench import BenchOptions, bench_table, run_bench

    chosen = {} if only is None else {"parts": tuple(part.strip() for part in only.split(","))}
    results = run_bench(BenchOptions(out=out, quick=quick, progress=progress, **chosen))
    typer.echo(bench_table(results))
    typer.echo(f"bench: {len(results['summary'])} figures -> {out}")


if __name__ == "__main__":
    app()
