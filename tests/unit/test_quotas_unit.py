"""Pure parts of natsgw.pipeline.quotas: the token bucket, the call planner, the policy file."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsgw._generated.isa import nats as pb
from natsgw.config import ConfigError, Settings
from natsgw.pipeline.quotas import Kind, Limits, QuotaPolicy, TokenBucket, plan_for, words
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


def test_words_split_rpc_names() -> None:
    assert words("KVCreateBucket") == ["KV", "Create", "Bucket"]
    assert words("PublishToStreamBatch") == ["Publish", "To", "Stream", "Batch"]
    assert words("ObjectPutStream") == ["Object", "Put", "Stream"]


def test_plan_for_known_and_new_rpcs() -> None:
    create = pb.CreateStreamRequest(config=pb.StreamConfig(name="orders"))
    assert plan_for("CreateStream", create).creates is Kind.STREAM
    assert plan_for("CreateStream", create).max_bytes_at == "config"
    consumer = pb.CreateConsumerRequest(
        stream_name="orders", config=pb.ConsumerConfig(durable_name="w")
    )
    plan = plan_for("CreateConsumer", consumer)
    assert (plan.creates, plan.name, plan.stream) == (Kind.CONSUMER, "w", "orders")
    assert plan_for("KVPut", pb.KvPutRequest(bucket="b")).creates is Kind.KV_BUCKET
    assert plan_for("KVGet", pb.KvGetRequest(bucket="b")).creates is None
    bucket = plan_for("KVCreateBucket", pb.KvCreateBucketRequest(bucket="b"))
    assert (bucket.creates, bucket.max_bytes_at) == (Kind.KV_BUCKET, "request")
    streamed = pb.ObjectPutStreamRequest(header=pb.ObjectPutHeader(bucket="files"))
    assert plan_for("ObjectPutStream", streamed).creates is Kind.OBJECT_BUCKET
    batch = pb.PublishBatchRequest(messages=[pb.NatsMessage(), pb.NatsMessage()])
    assert plan_for("PublishBatch", batch).publishes == 2
    assert plan_for("Request", pb.RequestRequest()).publishes == 1
    assert plan_for("Subscribe", pb.SubscribeRequest()).publishes == 0
    # Consume's max_bytes is flow control, not a stream size.
    assert plan_for("Consume", pb.ConsumeRequest(max_bytes=5)).max_bytes_at == ""


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
