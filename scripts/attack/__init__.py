"""Attackers against a local natsgw (loopback, bounded loops): ``python -m scripts.attack.X``."""
