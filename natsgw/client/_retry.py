"""When the client repeats a call on its own, and how long it waits in between.

The rule (README "Client retries"):

- A unary call that failed with UNAVAILABLE is repeated when repeating it is harmless: the RPC is
  idempotent (the same table as the gateway's ``natsgw/pipeline/policy.py``, kept here because the
  client must not import the server; a test checks the two agree), or the request never left this
  process (the connection could not be made). DEADLINE_EXCEEDED is never retried: the deadline is
  the caller's budget.
- A streaming call (Subscribe, QueueSubscribe, Consume, KVWatch) that breaks (UNAVAILABLE, the
  connection lost, or the gateway ending it while shutting down) is opened again; KVWatch resumes
  after the last revision it delivered. If it cannot be reopened within its attempts, the
  iterator raises ``Unavailable``: a stream never ends silently.
- A gateway that is shutting down refuses new calls before running them ("the gateway is
  shutting down; retry elsewhere"): such a refusal is repeated for every RPC, on a new
  connection (the old one belongs to a process on its way out; it stays open for the calls
  still running there, which the gateway lets finish within its grace).
- Attempts are bounded, with exponential backoff and jitter between them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from natsgw.client.errors import NatsgwError, Unavailable

#: RPCs whose repetition after an unknown outcome leaves the same state (policy.py's
#: ``idempotent`` column; tests/unit/test_client_retry.py checks the two tables agree).
IDEMPOTENT: frozenset[str] = frozenset(
    {
        "AckMessage",
        "AckMessages",
        "CreateConsumer",
        "CreateStream",
        "GetConsumerInfo",
        "GetStatistics",
        "GetStreamInfo",
        "GetStreamStats",
        "HealthCheck",
        "KVBucketStatus",
        "KVDelete",
        "KVDeleteBucket",
        "KVGet",
        "KVHistory",
        "KVKeys",
        "KVListBuckets",
        "KVWatch",
        "ListConsumers",
        "ListStreams",
        "ObjectDelete",
        "ObjectGet",
        "ObjectGetStream",
        "ObjectList",
        "ObjectPut",
        "ObjectPutStream",
        "QueueSubscribe",
        "Subscribe",
        "Unsubscribe",
        "UpdateStream",
        # consumer control
        "PauseConsumer",
        "ResetConsumer",
        "ResumeConsumer",
        "UpdateConsumer",
    }
)


#: KVDelete with an expected revision: its state is idempotent, its answer is not (a repeat
#: after a success says FAILED_PRECONDITION), so it is retried only as an unsent request.
CONDITIONAL_KV_DELETE = "KVDelete(expected_revision)"


@dataclass(frozen=True, slots=True)
class Retry:
    """``attempts`` tries in all (1: never repeat); waits grow from ``first_delay`` to at most
    ``max_delay`` seconds, each jittered by up to a fifth."""

    attempts: int = 5
    first_delay: float = 0.1
    max_delay: float = 2.0

    def delays(self) -> Iterator[float]:
        """The waits before the 2nd, 3rd ... attempt (``attempts - 1`` of them)."""
        delay = self.first_delay
        for _ in range(max(0, self.attempts - 1)):
            yield delay * (1 + random.random() / 5)
            delay = min(delay * 2, self.max_delay)


#: Unary calls: 5 attempts over about 1.5 s.
UNARY = Retry()
#: Reopening a broken stream: 10 attempts over about 11 s (a gateway restart).
STREAM = Retry(attempts=10)
#: Never repeat.
NEVER = Retry(attempts=1)


#: What a draining gateway answers before running anything (natsgw/pipeline/chain.py, step 1).
DRAINING = "the gateway is shutting down; retry elsewhere"


def refused_while_draining(error: NatsgwError) -> bool:
    """The gateway refused the call unrun because it is shutting down: go to a new connection."""
    return isinstance(error, Unavailable) and error.message == DRAINING


def retryable(rpc: str, error: NatsgwError) -> bool:
    """Whether a unary ``rpc`` that failed with ``error`` may be sent again."""
    if not isinstance(error, Unavailable):
        return False
    return rpc in IDEMPOTENT or not error.sent or refused_while_draining(error)


__all__ = [
    "CONDITIONAL_KV_DELETE",
    "DRAINING",
    "IDEMPOTENT",
    "NEVER",
    "STREAM",
    "UNARY",
    "Retry",
    "refused_while_draining",
    "retryable",
]
