"""Operations beside the request path: audit shipping, metrics, the HTTP side port, Consul, TLS,
logging set-up, nats-server monitoring and the embedded nats-server."""
