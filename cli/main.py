"""The ``vidret`` command line: each command parses options and calls one library function."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import VidretError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="vidret: an offline video-text retrieval pipeline (decode -> encode -> index).",
)
manifest_app = typer.Typer(no_args_is_help=True, help="Check manifests (JSON Lines, one captioned video per line).")
app.add_typer(manifest_app, name="manifest")


def reports_errors(command):
    """Print a VidretError as one line and exit 1; Ctrl-C exits 130 without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except VidretError as error:
            typer.echo(f"error: {error}", err=True)
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


@app.command()
@reports_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder: videos/, manifest.jsonl, synth.json.")],
    videos: Annotated[int, typer.Option(help="Number of videos (20% test, 10% val, the rest train).")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace a dataset made with other options.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Write the built-in synthetic dataset: H.264 clips of moving shapes, with captions."""
    from pipeline.synth import SynthOptions, make_synthetic_dataset

    summary = make_synthetic_dataset(out, SynthOptions(videos=videos, seed=seed), force=force, progress=progress)
    typer.echo(summary.line())


@app.command()
@reports_errors
def decode(
    manifest: Annotated[Path, typer.Argument(help="The manifest file (.jsonl).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder, conventionally RUN/frames.")],
    split: Annotated[str, typer.Option(help="all, or one or more of train,val,test (comma-separated).")] = "all",
    frames: Annotated[int, typer.Option(help="Frames sampled per video.")] = 12,
    size: Annotated[int, typer.Option(help="Side of the square centre crop, in pixels.")] = 224,
    short_side: Annotated[
        int | None,
        typer.Option(
            help="Resize the short side to this before cropping (CLIP4Clip: the crop size).",
            show_default="size x 256/224, as MMAction2",
        ),
    ] = None,
    sampling: Annotated[
        str, typer.Option(help="uniform (MMAction2 UniformSample, test mode) or linspace (CLIP4Clip).")
    ] = "uniform",
    workers: Annotated[
        int | None, typer.Option(help="Decoder processes.", show_default="one per available core")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per video before its decoder process is killed.")] = 60.0,
    shard_size: Annotated[int, typer.Option(help="Videos per Parquet part file (the unit of resumption).")] = 100,
    num_shards: Annotated[int, typer.Option(help="Split the work over this many independent runs (machines).")] = 1,
    shard_index: Annotated[int, typer.Option(help="Which of the --num-shards runs this is, from 0.")] = 0,
    video_root: Annotated[
        Path | None, typer.Option(help="Resolve relative video paths here, not next to the manifest.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Delete what an earlier decode wrote to --out and start again.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Sample frames from every video with decord and write them to Parquet shards."""
    from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
    from pipeline.decode.distributor import default_workers

    options = DecodeOptions(
        spec=FrameSpec(num_frames=frames, size=size, short_side=short_side, sampling=sampling),
        split=split,
        shard_size=shard_size,
        workers=default_workers() if workers is None else workers,
        timeout=timeout,
        num_shards=num_shards,
        shard_index=shard_index,
        video_root=video_root,
        force=force,
    )
    typer.echo(decode_videos(manifest, out, options, progress=progress).line())


if __name__ == "__main__":
    app()
