"""Every private API of a dependency natsgw uses, one small module per library.

Each entry says why no public API does the job and which upstream change would remove it. Each
module checks, at import, that the installed release is the one pinned in ``pyproject.toml``: an
upgrade fails loudly at start-up (and in the tests) instead of misbehaving quietly. To upgrade,
re-check every entry of the module against the new release, then move both pins together.

Nothing outside this package touches a dependency's private names.
"""

from __future__ import annotations

import importlib.metadata


class IncompatibleDependency(ImportError):
    """The installed release is not the one the shim was checked against."""


def require(distribution: str, pinned: str, shim: str) -> None:
    """Refuse to import ``shim`` unless ``distribution`` is exactly ``pinned``."""
    installed = importlib.metadata.version(distribution)
    if installed != pinned:
        raise IncompatibleDependency(
            f"{shim} reaches into private internals of {distribution} {pinned}, but "
            f"{distribution} {installed} is installed: re-check each entry of {shim} against "
            f"{installed}, then update the pin there and in pyproject.toml"
        )
