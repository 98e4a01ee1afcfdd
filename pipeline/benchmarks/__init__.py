"""The benchmark scripts: run each as ``python -m pipeline.benchmarks.NAME``; ``vidret bench`` runs them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.bench import machine
from pipeline.files import write_json


def percentiles(times: list[float], suffix: str = "") -> dict:
    """p50 and p99 of ``times``, rounded to 3 decimals, as ``{"p50" + suffix: ..., "p99" + suffix: ...}``."""
    return {f"p{q}{suffix}": round(float(np.percentile(times, q)), 3) for q in (50, 99)}


def run_script(
    parser: argparse.ArgumentParser, measure: Callable[[argparse.Namespace], dict], report: Callable[[dict], str],
    versions: dict,
) -> None:  # fmt: skip
    """A script's main: ``--seed`` and ``--out`` added to ``parser``; measure, print the report, and with
    ``--out`` write the result as JSON beside the machine's description and the libraries' ``versions``."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    result = measure(args)
    print(report(result), flush=True)
    if args.out:
        write_json(args.out, {"machine": machine(), **versions, **result})
