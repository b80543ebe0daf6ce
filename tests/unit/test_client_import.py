"""The client imports without the server: no nats-py, no gateway modules, no running loop."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import natsgw.client
roots = ("nats", "natsgw", "aiohttp", "structlog")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in roots)))
"""


def test_client_imports_without_nats_py_or_the_server() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True
    ).stdout
    loaded = json.loads(out)
    assert "natsgw.client" in loaded
    assert not [m for m in loaded if m == "nats" or m.startswith("nats.")]
    assert not [
        m for m in loaded if m.startswith(("natsgw.server", "natsgw.service", "natsgw.adapter"))
    ]
    assert "aiohttp" not in loaded and "structlog" not in loaded
