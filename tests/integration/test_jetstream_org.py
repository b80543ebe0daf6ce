"""JetStream in an organization's namespace: shared by its members, closed to everyone else."""

from __future__ import annotations

import datetime

import nats
from grpclib.client import Channel
from grpclib.const import Status

from natsgw._generated.isa import nats as pb
from natsgw.auth.identity import Metadata, Principal, Scope
from natsgw.errors import PermissionDenied
from natsgw.ops.embedded import EmbeddedNatsServer
from natsgw.server import Gateway
from natsgw.tenancy import Namespace, Tenant
from tests.conftest import gateway_settings, tenant
from tests.integration._jetstream import status_of


class MembersAuthenticator:
    """Test stand-in for the token/JWT authenticators: a fixed membership list."""

    def __init__(self, members: dict[str, set[str]]) -> None:
        self.members = members

    async def authenticate(
        self, metadata: Metadata, user_id: str, organization_id: str, scope: Scope
    ) -> Principal:
        if scope is Scope.ORGANIZATION:
            if user_id not in self.members.get(organization_id, set()):
                raise PermissionDenied(f"{user_id} is not a member of {organization_id}")
            return Principal(user_id=user_id, tenant=Tenant.organization(organization_id))
        return Principal(user_id=user_id, tenant=Tenant.user(user_id))


async def test_org_streams_and_tokens_are_shared_by_members_only(
    nats_server: EmbeddedNatsServer, nc: nats.NATS
) -> None:
    org, alice, bob, mallory = tenant("org"), tenant("alice"), tenant("bob"), tenant("mallory")
    gw = Gateway(
        gateway_settings(nats_server),
        authenticator=MembersAuthenticator({org: {alice, bob}}),
    )
    await gw.start()
    channel = Channel("127.0.0.1", gw.port)
    stub = pb.NatsServiceStub(channel)
    scope = pb.NamespaceScope.SCOPE_ORGANIZATION
    try:
        created = await stub.create_stream(
            pb.CreateStreamRequest(
                user_id=alice,
                organization_id=org,
                scope=scope,
                config=pb.StreamConfig(name="shared", subjects=["jobs.>"]),
            )
        )
        assert created.success
        org_ns = Namespace(Tenant.organization(org))
        assert (await nc.jetstream().stream_info(org_ns.stream("shared"))).config.subjects == [
            org_ns.pattern("jobs.>")
        ]
        await stub.publish_to_stream(
            pb.PublishToStreamRequest(
                user_id=bob,
                organization_id=org,
                scope=scope,
                stream_name="shared",
                subject="jobs.1",
                data=b"work",
            )
        )
        await stub.create_consumer(
            pb.CreateConsumerRequest(
                user_id=bob,
                organization_id=org,
                scope=scope,
                stream_name="shared",
                config=pb.ConsumerConfig(durable_name="w"),
            )
        )
        pulled = await stub.pull_messages(
            pb.PullMessagesRequest(
                user_id=alice,
                organization_id=org,
                scope=scope,
                stream_name="shared",
                consumer_name="w",
                batch_size=1,
                max_wait=datetime.timedelta(seconds=1),
            )
        )
        (message,) = pulled.messages
        token = message.ack_token
        # The same person in their own namespace does not own the organization's delivery.
        own = pb.AckMessageRequest(user_id=alice, ack_token=token)
        assert await status_of(stub.ack_message(own)) == Status.PERMISSION_DENIED
        outsider = pb.AckMessageRequest(
            user_id=mallory, organization_id=org, scope=scope, ack_token=token
        )
        assert await status_of(stub.ack_message(outsider)) == Status.PERMISSION_DENIED
        info = await nc.jetstream().consumer_info(org_ns.stream("shared"), "w")
        assert info.num_ack_pending == 1
        # Another member acts on it.
        acked = await stub.ack_message(
            pb.AckMessageRequest(user_id=bob, organization_id=org, scope=scope, ack_token=token)
        )
        assert acked.success
        info = await nc.jetstream().consumer_info(org_ns.stream("shared"), "w")
        assert info.num_ack_pending == 0
        assert info.ack_floor.stream_seq == 1
        # Members' own namespaces do not see the organization's stream.
        listed = await stub.list_streams(pb.ListStreamsRequest(user_id=alice))
        assert listed.streams == []
        shared = await stub.list_streams(
            pb.ListStreamsRequest(user_id=bob, organization_id=org, scope=scope)
        )
        assert [s.name for s in shared.streams] == ["shared"]
    finally:
        channel.close()
        await gw.stop()
