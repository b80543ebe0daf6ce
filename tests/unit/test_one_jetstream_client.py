"""The adapter is the gateway's one JetStream client (issue 8 point 4).

natsgw speaks the JetStream API itself (natsgw.adapter.jetstream); nats-py is used for core NATS
only. A second client beside it (nats-py's JetStream context, ``nats.js`` KV/ObjectStore
classes, its error types) is what this test refuses, anywhere in the package.

Bucket streams are written out by hand, so they are compared here with what nats-py's own
``create_key_value`` / ``create_object_store`` send for the same settings: a bucket natsgw makes
must be the bucket every NATS client makes (tests/integration/test_bucket_interop.py uses them).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from nats.js import api
from nats.js.client import JetStreamContext

from natsgw.adapter import kv, objects
from natsgw.adapter.types import BucketDefaults

PACKAGE = Path(__file__).resolve().parents[2] / "natsgw"


def jetstream_context_uses(path: Path) -> list[str]:
    """``nats.js`` imports and ``.jetstream(`` calls in one source file, as ``line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        line = getattr(node, "lineno", 0)
        found += [
            f"{line}: import {n}" for n in names if n == "nats.js" or n.startswith("nats.js.")
        ]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "jetstream"
        ):
            found.append(f"{node.lineno}: .jetstream() call")
        if isinstance(node, ast.Attribute) and node.attr == "js" and _is_nats(node.value):
            found.append(f"{node.lineno}: nats.js attribute")
    return found


def _is_nats(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "nats"


def test_nothing_in_natsgw_uses_nats_py_jetstream() -> None:
    sources = [p for p in PACKAGE.rglob("*.py") if "_generated" not in p.parts]
    assert len(sources) > 50  # the walk really saw the package
    offenders = {
        str(path.relative_to(PACKAGE.parent)): uses
        for path in sources
        if (uses := jetstream_context_uses(path))
    }
    assert offenders == {}, "natsgw.adapter.jetstream is the one JetStream client"


@pytest.mark.parametrize(
    "source",
    [
        "from nats.js import api\n",
        "import nats.js.errors\n",
        "from nats.js.kv import KeyValue\n",
        "js = nc.jetstream(domain='x')\n",
        "import nats\nerr = nats.js.errors.APIError\n",
    ],
)
def test_the_check_sees_each_way_in(tmp_path: Path, source: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert jetstream_context_uses(path)


class _Captured(Exception):
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config


class _Capturing(JetStreamContext):
    """nats-py's JetStream context with its one stream-creating call intercepted."""

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]  # never talks to a server

    async def add_stream(
        self, config: api.StreamConfig | None = None, **params: Any
    ) -> api.StreamInfo:
        assert config is not None
        raise _Captured(config.as_dict())


DEFAULTS = [
    BucketDefaults(),
    BucketDefaults(history=5, ttl=3600.0, max_bytes=1 << 20, storage="memory", replicas=3),
    BucketDefaults(history=64, ttl=30.0, max_bytes=0, storage="file"),
]


@pytest.mark.parametrize("defaults", DEFAULTS)
async def test_kv_bucket_stream_is_the_one_nats_py_makes(defaults: BucketDefaults) -> None:
    config = api.KeyValueConfig(
        bucket="b",
        history=defaults.history,
        ttl=defaults.ttl or None,
        max_bytes=defaults.max_bytes or -1,
        storage=api.StorageType(defaults.storage),
        replicas=defaults.replicas,
        direct=True,
    )
    with pytest.raises(_Captured) as made:
        await _Capturing().create_key_value(config)
    assert kv.bucket_config("b", defaults) == made.value.config


@pytest.mark.parametrize("defaults", DEFAULTS)
async def test_object_bucket_stream_is_the_one_nats_py_makes(defaults: BucketDefaults) -> None:
    config = api.ObjectStoreConfig(
        ttl=defaults.ttl or None,
        max_bytes=defaults.max_bytes or -1,
        storage=api.StorageType(defaults.storage),
        replicas=defaults.replicas,
    )
    with pytest.raises(_Captured) as made:
        await _Capturing().create_object_store("b", config=config)
    assert objects.bucket_config("b", defaults) == made.value.config
