"""TenantMeter: bounded memory, counters that never go down, pseudonyms; its settings."""

from __future__ import annotations

import pytest

from natsgw.config import ConfigError, Settings
from natsgw.ops.metrics import TenantMeter
from natsgw.tenancy import Namespace, Tenant


def _ns(user: str) -> Namespace:
    return Namespace(Tenant.user(user))


def test_the_table_is_bounded_and_what_leaves_it_stays_in_other() -> None:
    meter = TenantMeter(capacity=3, top=1)
    for i in range(10):
        meter.entry(_ns(f"u{i}")).calls += i + 1
    assert len(meter) == 3  # an attacker inventing user ids cannot grow it
    shown, other = meter.shown()
    assert [e.label for e in shown] == ["user:u9"]
    assert shown[0].calls + other.calls == sum(range(1, 11))  # nothing lost, only summed


def test_recently_active_tenants_stay() -> None:
    meter = TenantMeter(capacity=2)
    meter.entry(_ns("old")).calls = 5
    meter.entry(_ns("new")).calls = 1
    meter.entry(_ns("old")).calls += 1  # active again: the least recent is now "new"
    meter.entry(_ns("third"))
    assert meter.find(_ns("old").key) is not None
    assert meter.find(_ns("new").key) is None


def test_pseudonyms_hide_names_unless_asked() -> None:
    hidden = TenantMeter(listed=("user:listed",), pseudonym_key=b"k" * 16)
    assert hidden.display("user:listed") == "user:listed"
    alias = hidden.display("user:alice")
    assert alias.startswith("t-") and "alice" not in alias
    assert alias == TenantMeter(pseudonym_key=b"k" * 16).display("user:alice")  # same key
    assert alias != TenantMeter(pseudonym_key=b"j" * 16).display("user:alice")
    assert TenantMeter(names=True).display("user:alice") == "user:alice"


def test_the_settings() -> None:
    s = Settings.from_env(
        {
            "NATSGW_METRICS_TENANTS": "user:a, organization:acme",
            "NATSGW_METRICS_TENANTS_TOP": "3",
            "NATSGW_STATUS_TENANT_NAMES": "true",
            "NATSGW_TENANT_STATS_MAX": "500",
        }
    )
    assert s.metrics_tenants == ("user:a", "organization:acme")
    assert (s.metrics_tenants_top, s.status_tenant_names, s.tenant_stats_max) == (3, True, 500)
    with pytest.raises(ConfigError, match=r"NATSGW_METRICS_TENANTS=.*user:ID or organization:ID"):
        Settings.from_env({"NATSGW_METRICS_TENANTS": "alice"})
    with pytest.raises(ConfigError, match="NATSGW_METRICS_TENANTS_TOP"):
        Settings.from_env({"NATSGW_METRICS_TENANTS_TOP": "5000"})
    with pytest.raises(ConfigError, match="NATSGW_TENANT_STATS_MAX"):
        Settings.from_env({"NATSGW_TENANT_STATS_MAX": "0"})
    with pytest.raises(ConfigError, match="NATSGW_METRICS_TENANTS"):
        Settings(metrics_tenants=("nobody",)).validated()
