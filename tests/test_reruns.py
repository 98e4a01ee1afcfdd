"""Stage caching across the pipeline: an unchanged rerun skips every stage, a changed index option
reruns only the index, and changed frames rerun everything after decode."""

from __future__ import annotations

from pathlib import Path

from pipeline.decode import DecodeOptions, FrameSpec, decode_videos
from pipeline.encode.embed import EmbedOptions, embed
from pipeline.encode.train import TrainOptions, make_recipe, train
from pipeline.index import IndexOptions, index_embeddings


def run_pipeline(manifest: Path, run: Path, num_frames: int = 4, force_decode: bool = False, dsl: bool = False):
    """decode -> train -> embed -> index, as `make decode encode index` does; every stage's summary."""
    decode_options = DecodeOptions(spec=FrameSpec(num_frames=num_frames, size=32), workers=1, force=force_decode)
    decoded = decode_videos(manifest, run / "frames", decode_options, progress=False)
    recipe = make_recipe("mmaction2", epochs=1, batch_size=8, lr=1e-3)
    trained = train(
        TrainOptions(
            run / "frames", manifest, run / "model", model="vidret-micro", pretrained="none", head="seqTransf",
            recipe=recipe, device="cpu", progress=False,
        )
    )  # fmt: skip
    embedded = embed(
        EmbedOptions(
            run / "frames", manifest, run / "embeddings", checkpoint=run / "model" / "best.pt", device="cpu",
            progress=False,
        )
    )  # fmt: skip
    indexed = index_embeddings(run / "embeddings", run / "index", IndexOptions(dsl=dsl, progress=False))
    return decoded, trained, embedded, indexed


def test_reruns_follow_what_changed(decoded_synthetic, tmp_path):
    manifest = decoded_synthetic["manifest"]
    decoded, trained, embedded, indexed = run_pipeline(manifest, tmp_path)
    assert decoded.chunks_run and not trained.skip_reason and not embedded.skip_reason and not indexed.skip_reason
    assert trained.ran_because == embedded.ran_because == indexed.ran_because == ""
    first_metrics = indexed.metrics

    # Nothing changed: every stage says it has nothing to do.
    decoded, trained, embedded, indexed = run_pipeline(manifest, tmp_path)
    assert decoded.chunks_run == 0 and decoded.line().startswith("decode: skipped, ")
    assert trained.line().startswith("train: skipped, ") and trained.steps == 0
    assert embedded.line().startswith("embed: skipped, ")
    assert indexed.line().startswith("index: skipped, ") and indexed.metrics == first_metrics

    # An index option: only the index reruns.
    decoded, trained, embedded, indexed = run_pipeline(manifest, tmp_path, dsl=True)
    assert decoded.chunks_run == 0 and trained.skip_reason and embedded.skip_reason
    assert indexed.ran_because == " (ran: its parameters changed (dsl_scale None -> 100.0))"
    assert "dsl" in indexed.metrics

    # A decode option: the frames change, so training, embedding and the index all rerun.
    decoded, trained, embedded, indexed = run_pipeline(manifest, tmp_path, num_frames=3, force_decode=True, dsl=True)
    assert decoded.chunks_run == decoded.chunks_total
    assert trained.ran_because == " (ran: its inputs changed)" and trained.steps > 0
    assert embedded.ran_because == " (ran: its inputs changed)"
    assert indexed.ran_because == " (ran: its inputs changed)"
