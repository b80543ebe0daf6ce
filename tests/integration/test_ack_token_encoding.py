"""Issue #17 row K: an ack token is accepted only in the exact spelling the gateway issued.

Before the fix, padding, the standard base64 alphabet or a changed unused bit gave other texts
that AckMessages took for the same token (a token is a capability: one delivery, one spelling).
"""

from __future__ import annotations

import pytest

from natsgw._generated.isa import nats as pb
from tests.conftest import tenant
from tests.integration._jetstream import make_consumer, make_stream, publish, pull
from tests.unit.test_acks import reencodings

pytestmark = pytest.mark.integration


async def test_re_encoded_ack_tokens_are_refused(stub: pb.NatsServiceStub) -> None:
    user = tenant()
    await make_stream(stub, user, "enc", ["enc.>"])
    await make_consumer(stub, user, "enc", "c")
    for i in range(20):
        await publish(stub, user, "enc", "enc.x", str(i).encode())
    messages = await pull(stub, user, "enc", "c", batch=20)
    assert len(messages) == 20
    variants = [v for m in messages for v in reencodings(m.ack_token).values()]
    answer = await stub.ack_messages(pb.AckMessagesRequest(user_id=user, ack_tokens=variants))
    print(f"\nre-encoded ack tokens accepted by AckMessages: {answer.succeeded}/{len(variants)}")
    assert answer.succeeded == 0
    assert {r.status_code for r in answer.results} == {3}  # INVALID_ARGUMENT
    assert all("not an ack token issued by this gateway" in r.error for r in answer.results)
    # The tokens as issued still settle their deliveries.
    tokens = [m.ack_token for m in messages]
    answer = await stub.ack_messages(pb.AckMessagesRequest(user_id=user, ack_tokens=tokens))
    assert answer.succeeded == 20
