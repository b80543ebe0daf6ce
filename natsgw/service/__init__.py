"""The API's areas as service objects: translate wire messages into tenancy + adapter calls.

One module per area (messaging, jetstream, kv, objects, stats, health), each a class whose
constructor takes its collaborators; :mod:`natsgw.service.gateway` composes them into the
``isa.nats.NATSService`` implementation. A service method receives the call (its namespace,
deadline) from the pipeline and never authenticates or builds NATS names itself.
"""
