"""hyperframe internals the gateway patches: the repr of frames h2 builds for its trace log."""

from __future__ import annotations

import binascii

import hyperframe.frame

from natsgw.compat import require

PINNED = "6.1.0"
require("hyperframe", PINNED, __name__)


def _short_data_repr(data: bytes | None) -> str:
    """hyperframe's ``_raw_data_repr`` (same text), hexlifying only the 10 bytes it shows."""
    if not data:
        return "None"
    shown = binascii.hexlify(data[:10]).decode("ascii")
    return "<hex:" + (shown + "..." if len(data) > 10 else shown) + ">"


def short_frame_reprs() -> None:
    """Make the repr of a DATA frame cost the same whatever its size.

    Why: h2 4.4.1 calls ``repr(frame)`` for every received frame to pass it to its (no-op by
    default) trace logger, and hyperframe's repr hexlifies the whole payload before keeping 20
    characters of it: ~10 ms of the gateway's CPU per 8 MiB request (512 frames of 16 KiB).
    Upstream fix that removes it: h2 passing the frame lazily (``logger.trace("%r", frame)``) or
    hyperframe truncating before hexlifying.
    """
    setattr(hyperframe.frame, "_raw_data_repr", _short_data_repr)  # noqa: B010 - private
