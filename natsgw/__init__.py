"""natsgw: a multi-tenant gRPC gateway in front of NATS."""

__version__ = "0.1.0"
