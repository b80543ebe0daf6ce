"""natsgw benchmark suite: every row of issue 12 (and issue 8 point 8) side by side in one run.

Run from the repository root with ``nox -s bench`` or ``python -m scripts.bench [--quick]``.
Each row measures natsgw beside its baseline (direct nats-py on the same nats-server, or a bare
grpclib server) in the same run, so the ratios survive a noisy shared machine. Nothing here
asserts anything about speed: the suite prints figures.
"""
