"""Pure parts of the multi-worker mode: the setting, and merging the workers' metrics."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from natsgw.config import ConfigError, Settings
from natsgw.ops.workers_http import merge_metrics


def test_workers_setting() -> None:
    assert Settings.from_env({}).workers == 1
    assert Settings.from_env({"NATSGW_WORKERS": "4"}).workers == 4
    for bad in ("0", "65", "two"):
        with pytest.raises(ConfigError, match="NATSGW_WORKERS"):
            Settings.from_env({"NATSGW_WORKERS": bad})


def _exposition(calls: int) -> str:
    registry = CollectorRegistry()
    counter = Counter("natsgw_rpc_calls", "Calls", ["rpc"], registry=registry)
    counter.labels("Publish").inc(calls)
    Histogram("natsgw_rpc_duration_seconds", "Time", registry=registry).observe(0.01)
    return generate_latest(registry).decode()


def test_merged_metrics_keep_every_worker_apart_under_one_family() -> None:
    text = merge_metrics([(0, _exposition(3)), (1, _exposition(5))], [(0, 0), (1, 2)]).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    calls = {
        s.labels["worker"]: s.value
        for s in families["natsgw_rpc_calls"].samples
        if s.name == "natsgw_rpc_calls_total"
    }
    assert calls == {"0": 3.0, "1": 5.0}
    assert families["natsgw_rpc_calls"].type == "counter"
    assert text.count("# TYPE natsgw_rpc_calls_total counter") == 1  # one family, not two
    buckets = [
        s for s in families["natsgw_rpc_duration_seconds"].samples if s.name.endswith("_count")
    ]
    assert sorted(s.labels["worker"] for s in buckets) == ["0", "1"]
    restarts = {s.labels["worker"]: s.value for s in families["natsgw_worker_restarts"].samples}
    assert restarts == {"0": 0.0, "1": 2.0}
