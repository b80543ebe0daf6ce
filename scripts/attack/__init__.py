"""Attacks on a running natsgw, reproducing issue 17's findings (``python -m scripts.attack.X``)."""
