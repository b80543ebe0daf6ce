"""Developer scripts; ``scripts.bench`` is the benchmark suite (``python -m scripts.bench``)."""
