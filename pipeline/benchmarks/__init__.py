"""The benchmark scripts: run each as ``python -m pipeline.benchmarks.NAME``; ``vidret bench`` runs three of them."""
