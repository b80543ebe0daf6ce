"""One owner per data directory: an ``flock`` on ``<data dir>/natsgw.lock``.

Two natsgw processes on one JetStream store both answer "stored" for different messages with the
same sequence, and one of them is lost at the next restart. The lock is held on an open file
descriptor for the life of the process, so the kernel releases it however the process ends
(SIGKILL included) and a stale lock file never blocks a restart. The file records the holder's
pid and host, for the refusal message only: the lock itself is the flock, not the file's content.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = "natsgw.lock"


class DataDirInUse(RuntimeError):
    """Another process holds the data directory; the message names it and the holder."""


class DataDirLock:
    """An exclusive, non-blocking flock on the data directory's lock file."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def fd(self) -> int | None:
        """The locked descriptor; a child given it keeps the lock held while it lives."""
        return self._fd

    def acquire(self) -> None:
        if self._fd is not None:
            return
        # 0700: the JetStream store and the nats-server credentials live here (a new directory).
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_CLOEXEC: only a child explicitly given the descriptor (our nats-server) shares it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirInUse(
                f"data directory {self.data_dir} is in use by another natsgw ({holder}); "
                f"stop it or set NATSGW_DATA_DIR to another directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown: it has not written its pid yet"
