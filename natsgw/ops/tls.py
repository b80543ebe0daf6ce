"""TLS for the gRPC port: server certificate, and with a client CA, mutual TLS.

``NATSGW_TLS_CERT_FILE`` / ``NATSGW_TLS_KEY_FILE`` (PEM) turn TLS on; ``NATSGW_TLS_CLIENT_CA_FILE``
makes a client certificate signed by that CA mandatory (the handshake fails without one). TLS 1.2
is the floor and ALPN offers ``h2``, as gRPC requires.
"""

from __future__ import annotations

import ssl

from natsgw.config import ConfigError, Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's SSLContext, or None for plaintext; ConfigError names a bad file."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"NATSGW_TLS_CERT_FILE={str(settings.tls_cert_file)!r} / NATSGW_TLS_KEY_FILE="
            f"{str(settings.tls_key_file)!r} cannot be loaded: {exc}"
        ) from None
    if settings.tls_client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(settings.tls_client_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"NATSGW_TLS_CLIENT_CA_FILE={str(settings.tls_client_ca_file)!r} cannot be "
                f"loaded: {exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context
