"""The HTTP/2 edge defends itself: per-connection frame budgets, timeouts, connection caps, an
outbound byte budget, the fd limit and accept errors.

``guard`` holds the per-connection protocol wrapper and the :class:`~natsgw.edge.guard.Edge`
that owns every guarded connection; ``budget`` counts frames, ``limits`` counts connections,
``fds`` raises the fd limit and throttles accept-error logs.
"""
