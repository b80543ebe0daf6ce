"""gRPC handlers: translate wire messages into calls on tenancy and the adapter, and back.

One module per area of the API; :mod:`natsgw.service.gateway` composes them into the
``isa.nats.NATSService`` implementation. Handlers never build NATS names themselves.
"""
