"""What happens around every call: read :mod:`natsgw.pipeline.chain` top to bottom.

``chain`` holds the steps (identity, namespace, quotas, metrics, audit, in-flight, deadline, error
mapping) in the order they run; ``policy`` says per RPC what it is; ``call`` is what a handler
receives; ``quotas`` enforces per-tenant limits; ``rejects`` logs undecodable requests, rate-limited
per peer.
"""
