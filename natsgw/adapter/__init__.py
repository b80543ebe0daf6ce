"""The only package that speaks nats-py. Everything above it sees plain values and GatewayErrors."""

from natsgw.adapter.core import NatsAdapter, Subscription
from natsgw.adapter.types import ConnectionState, Message, ServerFacts

__all__ = ["ConnectionState", "Message", "NatsAdapter", "ServerFacts", "Subscription"]
