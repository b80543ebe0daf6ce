"""Response frames without whole-message copies: how large answers (ObjectGet) stay lean.

grpclib 0.4.9 sends a response as ``prefix + encoded`` (one copy of the message) in DATA frames as
large as the client allows (grpc-core allows 16 MiB), and every frame is copied a few more times
on its way to the socket. For an 8 MiB ObjectGet that was five 8 MiB buffers alive at once besides
the response itself. :func:`install` makes the server send the 5-byte prefix and a large message
as separate writes (small messages are still joined: one frame, one write) and caps outbound DATA
frames at :data:`MAX_FRAME`, so what is copied on the way out is one frame at a time. It also stops
h2 formatting every received frame for its no-op trace logger (natsgw.compat.h2), and keeps a
frame's repr cheap where one is still made (natsgw.compat.hyperframe). The grpclib internals
this needs are patched by natsgw.compat.grpclib.
"""

from __future__ import annotations

import struct
from typing import Any

from natsgw.compat import grpclib as grpclib_compat
from natsgw.compat import h2 as h2_compat
from natsgw.compat import hyperframe as hyperframe_compat

#: Largest outbound DATA frame: big enough that framing costs little, small enough to copy freely.
MAX_FRAME = 64 * 1024
#: Messages below this are joined with their prefix (one frame, one socket write).
JOIN_BELOW = 64 * 1024
_PREFIX = struct.Struct(">?I")
_installed = False


async def send_message(
    stream: Any, codec: Any, message: Any, message_type: Any, *, end: bool = False
) -> None:
    """grpclib's ``send_message``, without joining a large message to its prefix."""
    encoded = codec.encode(message, message_type)
    prefix = _PREFIX.pack(False, len(encoded))
    if len(encoded) < JOIN_BELOW:
        await stream.send_data(prefix + encoded, end_stream=end)
        return
    await stream.send_data(prefix)
    await stream.send_data(encoded, end_stream=end)


def install() -> None:
    """Patch grpclib's server once per process (through natsgw.compat.grpclib); idempotent."""
    global _installed
    if _installed:
        return
    grpclib_compat.replace_message_sender(send_message)
    grpclib_compat.cap_outbound_frames(MAX_FRAME)
    hyperframe_compat.short_frame_reprs()
    h2_compat.skip_received_frame_reprs()
    _installed = True
