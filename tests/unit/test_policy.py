"""Every RPC of the generated service has a policy row and a route; the rows hold together."""

from __future__ import annotations

from natsgw._generated.isa import nats as pb
from natsgw.adapter import NatsAdapter
from natsgw.auth.identity import TrustedAuthenticator
from natsgw.config import Settings
from natsgw.ops.audit import AuditLog
from natsgw.ops.metrics import Metrics
from natsgw.ops.monitoring import NatsMonitor
from natsgw.pipeline.chain import Pipeline
from natsgw.pipeline.policy import POLICIES, SERVICE, Audit
from natsgw.service.fanout import FanOut
from natsgw.service.gateway import NATSGateway, Services, routes
from natsgw.service.subscriptions import SubscriptionRegistry


class _Generated(pb.NatsServiceBase):
    """The generated mapping as protoc wrote it (paths, types, cardinality)."""


def generated_paths() -> set[str]:
    return set(_Generated().__mapping__())


def services() -> Services:
    settings = Settings()
    adapter = NatsAdapter(["nats://127.0.0.1:4222"])  # never started: nothing connects
    fanout = FanOut(adapter, pending_msgs=1, pending_bytes=1)
    return Services.build(
        settings, adapter, SubscriptionRegistry(), fanout, NatsMonitor(""), TrustedAuthenticator()
    )


def test_every_generated_rpc_has_a_policy_row() -> None:
    missing = generated_paths() - set(POLICIES)
    assert not missing, f"RPCs without a row in natsgw.pipeline.policy: {sorted(missing)}"
    assert not set(POLICIES) - generated_paths(), "rows for RPCs the service does not have"


def test_every_generated_rpc_has_a_route() -> None:
    table = routes(services())
    assert set(table) == generated_paths()


def test_the_gateway_serves_every_path_through_the_pipeline() -> None:
    pipeline = Pipeline(
        authenticator=TrustedAuthenticator(),
        metrics=Metrics(),
        audit=AuditLog(),
        quotas=None,
        root="natsgw",
    )
    mapping = NATSGateway(services(), pipeline).__mapping__()
    generated = _Generated().__mapping__()
    assert set(mapping) == set(generated)
    for path, handler in mapping.items():
        assert handler.cardinality == generated[path].cardinality
        assert handler.request_type is generated[path].request_type
        assert handler.func.__qualname__.startswith("Pipeline.handler"), path


def test_rows_are_consistent() -> None:
    for path, row in POLICIES.items():
        assert path == SERVICE + row.rpc
        if row.audit is Audit.ALWAYS or row.audit is Audit.DATA_PLANE:
            assert row.changes, f"{row.rpc}: audited as a change but marked read-only"
        if not row.changes:
            assert row.audit is Audit.REFUSALS, row.rpc
        if row.cost is not None and row.cost.creates:
            assert row.changes, row.rpc
    public = [row.rpc for row in POLICIES.values() if row.public]
    assert public == ["HealthCheck"]


def test_control_plane_changes_are_always_audited() -> None:
    for rpc in ("CreateStream", "DeleteStream", "UpdateStream", "PurgeStream", "CreateConsumer",
                "DeleteConsumer", "KVCreateBucket", "KVDeleteBucket"):  # fmt: skip
        assert POLICIES[SERVICE + rpc].audit is Audit.ALWAYS, rpc
    for rpc in ("Publish", "PublishBatch", "PublishToStream", "AckMessage", "AckMessages", "KVPut"):
        assert POLICIES[SERVICE + rpc].audit is Audit.DATA_PLANE, rpc
