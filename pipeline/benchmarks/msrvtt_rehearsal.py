"""Rehearse the MSR-VTT recipe without MSR-VTT: the synthetic clips in MSR-VTT's official layout.

Writes CLIP4Clip's annotation files (``MSRVTT_train.9k.csv``, ``MSRVTT_data.json``,
``MSRVTT_JSFUSION_test.csv``) for a synthetic dataset, naming its clips ``video0``,
``video1``, … (links in ``OUT/videos``), so that ``make manifest decode encode index
DATASET=msrvtt-9k`` runs exactly as it would on the real files. The synthetic train and
val clips make the 9k split (every caption a training sample), the test clips 1k-A
(one sentence each).

    .venv/bin/python -m pipeline.benchmarks.msrvtt_rehearsal data/synthetic /tmp/msrvtt-rehearsal

then run the make command it prints (a CPU-sized model; the real recipe is in docs/reproduction.md).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from pipeline.manifest import read_manifest


def write_msrvtt_layout(manifest: Path, out: Path) -> dict[str, int]:
    entries = read_manifest(manifest)
    annotations, videos = out / "msrvtt_data", out / "videos"
    annotations.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    train, test, sentences = [], [], []
    for number, entry in enumerate(entries):
        video_id = f"video{number}"
        link = videos / f"{video_id}{entry.path.suffix}"
        link.unlink(missing_ok=True)
        link.symlink_to(entry.path)
        (test if entry.split == "test" else train).append((video_id, entry.captions[0]))
        for caption in entry.captions:
            sentences.append({"caption": caption, "video_id": video_id, "sen_id": len(sentences)})
    with open(annotations / "MSRVTT_train.9k.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["video_id"], *[[video_id] for video_id, _ in train]])
    with open(annotations / "MSRVTT_JSFUSION_test.csv", "w", newline="") as handle:
        rows = [[f"ret{k}", f"msr{video_id[5:]}", video_id, caption] for k, (video_id, caption) in enumerate(test)]
        csv.writer(handle).writerows([["key", "vid_key", "video_id", "sentence"], *rows])
    (annotations / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": [], "sentences": sentences}))
    return {"train": len(train), "test": len(test), "sentences": len(sentences)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a synthetic dataset folder (vidret synth), with manifest.jsonl")
    parser.add_argument("out", type=Path, help="where to write msrvtt_data/ and videos/")
    args = parser.parse_args()
    counts = write_msrvtt_layout(args.data / "manifest.jsonl", args.out)
    train, test, sentences = counts["train"], counts["test"], counts["sentences"]
    print(f"msrvtt rehearsal: {train} train and {test} test videos, {sentences} sentences")
    print(
        f"make manifest decode encode index DATASET=msrvtt-9k ANNOTATIONS={args.out}/msrvtt_data"
        f" VIDEO_DIR={args.out}/videos MANIFEST={args.out}/msrvtt-9k.jsonl RUN={args.out}/run"
        " MODEL=vidret-tiny PRETRAINED=none HEAD=seqTransf FRAMES=4 SIZE=112"
        ' DECODE_ARGS="--short-side 112 --train-views 5"'
        ' TRAIN_ARGS="--recipe demo --caption-length 32"'
    )


if __name__ == "__main__":
    main()
