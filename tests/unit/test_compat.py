"""The private-API shims refuse to load against any release but the one pinned."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from natsgw import compat
from natsgw.compat import betterproto2 as betterproto2_compat
from natsgw.compat import grpclib as grpclib_compat
from natsgw.compat import h2 as h2_compat
from natsgw.compat import hyperframe as hyperframe_compat
from natsgw.compat import nats as nats_compat

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def pinned(distribution: str) -> str:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.fullmatch(rf"{re.escape(distribution)}==([\w.]+)", dep)
        if match:
            return match.group(1)
    raise AssertionError(f"{distribution} is not pinned exactly in pyproject.toml")


@pytest.mark.parametrize(
    ("distribution", "shim"),
    [
        ("nats-py", nats_compat),
        ("grpclib", grpclib_compat),
        ("hyperframe", hyperframe_compat),
        ("h2", h2_compat),
        ("betterproto2", betterproto2_compat),
    ],
)
def test_each_shim_checks_the_release_pyproject_pins(distribution: str, shim: object) -> None:
    assert getattr(shim, "PINNED") == pinned(distribution)  # noqa: B009


def test_another_release_fails_loudly_at_import() -> None:
    installed = re.escape(pinned("grpclib"))
    with pytest.raises(
        compat.IncompatibleDependency, match=rf"0\.0\.1, but grpclib {installed} is"
    ):
        compat.require("grpclib", "0.0.1", "natsgw.compat.grpclib")
    compat.require("grpclib", pinned("grpclib"), "natsgw.compat.grpclib")  # the pinned one loads
