"""Pure parts of natsgw.pipeline.quotas: the token bucket, RPC costs, the policy file."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsgw._generated.isa import nats as pb
from natsgw.config import ConfigError, Settings
from natsgw.pipeline.call import bare_call
from natsgw.pipeline.policy import POLICIES, SERVICE
from natsgw.pipeline.quotas import Cost, Kind, Limits, QuotaPolicy, TokenBucket
from natsgw.tenancy import Tenant


def test_token_bucket_allows_burst_then_refills_at_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(5)] == [None] * 5
    assert bucket.take(1, 0.0) == pytest.approx(0.1)
    assert bucket.take(1, 0.1) is None  # one token came back
    assert bucket.take(5, 10.0) is None  # refills up to the burst, not beyond
    assert bucket.take(1, 10.0) == pytest.approx(0.1)
    # More than the burst at once can never be granted, however long one waits.
    assert bucket.take(6, 100.0) == math.inf


@given(
    rate=st.floats(0.5, 1000),
    burst=st.integers(1, 100),
    takes=st.lists(st.tuples(st.integers(1, 10), st.floats(0, 2)), max_size=50),
)
def test_token_bucket_never_grants_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, takes: list[tuple[int, float]]
) -> None:
    bucket = TokenBucket(rate, float(burst), now=0.0)
    now = 0.0
    granted = 0
    for count, step in takes:
        now += step
        if bucket.take(count, now) is None:
            granted += count
    assert granted <= burst + rate * now + 1e-6


def cost(rpc: str) -> Cost:
    row = POLICIES[SERVICE + rpc].cost
    assert row is not None, f"{rpc} costs nothing"
    return row


def test_costs_of_rpcs_come_from_their_policy_rows() -> None:
    create = pb.CreateStreamRequest(config=pb.StreamConfig(name="orders"))
    c = cost("CreateStream")
    assert (c.kind, c.creates, c.name(create)) == (Kind.STREAM, True, "orders")
    assert c.max_bytes is not None and c.max_bytes(create) == 0
    consumer = pb.CreateConsumerRequest(
        stream_name="orders", config=pb.ConsumerConfig(durable_name="w")
    )
    c = cost("CreateConsumer")
    assert (c.kind, c.name(consumer), c.stream(consumer)) == (Kind.CONSUMER, "w", "orders")
    assert cost("KVPut").kind is Kind.KV_BUCKET and cost("KVPut").creates
    assert POLICIES[SERVICE + "KVGet"].cost is None
    bucket = cost("KVCreateBucket")
    assert bucket.kind is Kind.KV_BUCKET and bucket.max_bytes_field == "max_bytes"
    streamed = pb.ObjectPutStreamRequest(header=pb.ObjectPutHeader(bucket="files"))
    assert cost("ObjectPutStream").kind is Kind.OBJECT_BUCKET
    assert cost("ObjectPutStream").name(streamed) == "files"
    batch = pb.PublishBatchRequest(messages=[pb.NatsMessage(), pb.NatsMessage()])
    publishes = cost("PublishBatch").publishes
    assert publishes is not None and publishes(batch) == 2
    request_publishes = cost("Request").publishes
    assert request_publishes is not None and request_publishes(pb.RequestRequest()) == 1
    assert POLICIES[SERVICE + "Subscribe"].cost is None
    # Consume's max_bytes is flow control, not a stream size.
    assert POLICIES[SERVICE + "Consume"].cost is None


def test_a_filled_in_byte_limit_is_a_copy() -> None:
    c = cost("CreateStream")
    assert c.with_max_bytes is not None
    request = pb.CreateStreamRequest(config=pb.StreamConfig(name="orders"))
    limited = c.with_max_bytes(request, 1024)
    assert limited.config is not None and limited.config.max_bytes == 1024
    assert request.config is not None and request.config.max_bytes == 0


def test_update_stream_without_config_gets_one_with_the_limit() -> None:
    c = cost("UpdateStream")
    assert c.max_bytes is not None and c.with_max_bytes is not None
    request = pb.UpdateStreamRequest(stream_name="orders")
    assert c.max_bytes(request) == 0
    limited = c.with_max_bytes(request, 1024)
    assert limited.config is not None and limited.config.max_bytes == 1024
    assert request.config is None


@given(st.integers(-5, 10_000), st.integers(0, 10_000))
def test_a_call_makes_buckets_within_its_byte_quota(configured: int, cap: int) -> None:
    call = bare_call(POLICIES[SERVICE + "KVPut"])
    assert call.capped_bytes(configured) == configured  # no quota: the setting as it is
    call.byte_cap = cap
    capped = call.capped_bytes(configured)
    if cap == 0:
        assert capped == configured
    else:
        assert 0 < capped <= cap
        assert capped == (cap if configured <= 0 else min(configured, cap))


def test_policy_file_overrides_per_tenant() -> None:
    policy = QuotaPolicy.parse(
        '{"default": {"streams": 2}, "tenants": {"organization:acme": {"streams": 9}}}',
        Limits(kv_buckets=4),
    )
    assert policy.limits_for(Tenant.user("x")) == Limits(streams=2, kv_buckets=4)
    assert policy.limits_for(Tenant.organization("acme")).streams == 9
    assert policy.limits_for(Tenant.organization("acme")).kv_buckets == 4
    assert policy.enabled
    assert not QuotaPolicy(Limits()).enabled


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[]", "JSON object"),
        ('{"default": {"stream": 1}}', "unknown quota 'stream'"),
        ('{"default": {"streams": -1}}', "streams must be a number >= 0"),
        ('{"tenants": {"alice": {}}}', "user:<id>"),
        ("{", "not valid JSON"),
    ],
)
def test_policy_file_errors_are_precise(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        QuotaPolicy.parse(text, Limits())


def test_policy_file_error_names_the_variable(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "q.json"
    path.write_text('{"default": {"nope": 1}}')
    with pytest.raises(ConfigError, match="NATSGW_QUOTAS_FILE"):
        QuotaPolicy.from_settings(Settings(quotas_file=path))


def test_quota_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "NATSGW_QUOTA_STREAMS": "3",
            "NATSGW_QUOTA_MAX_BYTES": "10MiB",
            "NATSGW_QUOTA_PUBLISH_RATE": "50/s",
        }
    )
    limits = QuotaPolicy.from_settings(settings).default
    assert (limits.streams, limits.max_bytes, limits.publish_rate) == (3, 10 * 1024 * 1024, 50.0)
    assert limits.burst == 50.0
    with pytest.raises(ConfigError, match="NATSGW_QUOTA_STREAMS"):
        Settings.from_env({"NATSGW_QUOTA_STREAMS": "-1"})
