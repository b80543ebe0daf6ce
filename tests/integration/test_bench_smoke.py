"""The benchmark suite (scripts/bench) still runs end to end and fills every row.

Tiny sizes (``--smoke``); it asserts only that each row produced a number, never how fast.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_row_of_the_benchmark_suite_produces_a_number(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    markdown = tmp_path / "table.md"
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--smoke", "--json", str(out),
         "--markdown", str(markdown)],
        cwd=ROOT, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    paths = [row["path"] for row in rows]
    wanted_rows = (
        *("PublishBatch", "Subscribe", "KVPut", "KVGet", "Consume", "PublishToStreamBatch"),
        *("ObjectPut", "ObjectGet", "RSS", "unary Publish"),
    )
    for wanted in wanted_rows:
        assert any(wanted in path for path in paths), f"no {wanted} row in {paths}"
    for row in rows:
        assert isinstance(row["natsgw"], int | float) and math.isfinite(row["natsgw"]), row
        assert row["ratio"] is not None and math.isfinite(row["ratio"]), row
    assert markdown.read_text().count("\n| ") == len(rows) + 1  # header + one line per row
