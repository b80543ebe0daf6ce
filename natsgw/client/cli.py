"""Try-it commands in the manner of the ``nats`` CLI, on natsgw.client: ``natsgw pub``, ``sub`` ...

Every command takes ``--target`` and credentials (also from ``NATSGW_TARGET``, ``NATSGW_TOKEN``,
``NATSGW_TOKEN_FILE``, ``NATSGW_USER_ID``), prints for people on a terminal, and one JSON object
per line with ``--json``. Failures print the gRPC status and the gateway's message on stderr and
exit 1; local problems (a file that cannot be read, a bad argument) exit 2; a reader that went
away (``| head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime
import enum
import getpass
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

from natsgw.client import smoke
from natsgw.client._retry import Retry
from natsgw.client.client import DEFAULT_PORT, Client, parse_target
from natsgw.client.errors import AlreadyExists, NatsgwError, NotFound, Unavailable
from natsgw.client.types import (
    ConsumerInfo,
    JsMsg,
    KvBucketInfo,
    KvEntry,
    KvOperation,
    Msg,
    ObjectInfo,
    StorageType,
    StreamConfig,
    StreamInfo,
)

Handler = Callable[[Client, argparse.Namespace], Awaitable[int]]
T = TypeVar("T")

#: Environment variables the commands read (the gateway's settings ignore them).
CLIENT_VARIABLES = ("NATSGW_TARGET", "NATSGW_TOKEN", "NATSGW_TOKEN_FILE", "NATSGW_USER_ID")

#: Long-running commands (sub, consume, kv watch) ride out a gateway restart of up to ~1 minute.
CLI_STREAM_RETRY = Retry(attempts=30)

#: Objects at least this big get a progress bar on ``obj put/get`` (when stderr is a terminal).
PROGRESS_FROM = 1024 * 1024


class UsageError(Exception):
    """A local problem the user can fix (a file, an argument): exit status 2, no traceback."""


# ---- output -------------------------------------------------------------------------------


def _text(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # generated messages
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def emit(args: argparse.Namespace, human: str, record: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(_jsonable(record), sort_keys=True), flush=True)
    else:
        print(human, flush=True)


def size(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 KiB``, ``12.0 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _listing(
    args: argparse.Namespace,
    record: dict[str, Any],
    items: list[T],
    empty: str,
    line: Callable[[T], str],
) -> int:
    """What every ``ls`` prints: ``record`` as one JSON object, ``empty`` when there is
    nothing, else one ``line`` per item (flushed: ``| head`` sees them as they come)."""
    if args.json:
        emit(args, "", record)
    elif not items:
        print(empty)
    else:
        for item in items:
            print(line(item), flush=True)
    return 0


def _when(ts: datetime.datetime | None) -> str:
    return ts.astimezone().strftime("%H:%M:%S.%f")[:-3] if ts else "--:--:--"


def _headers(headers: dict[str, str]) -> str:
    return "".join(f"\n    {k}: {v}" for k, v in sorted(headers.items()))


def _header_args(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        key, sep, rest = value.partition(":")
        if not sep or not key.strip():
            raise UsageError(f"header {value[:40]!r}: expected KEY:VALUE")
        headers[key.strip()] = rest.strip()
    return headers


class Progress:
    """A one-line progress bar on a terminal's stderr; silent anywhere else (pipes, logs, CI)."""

    def __init__(self, label: str, total: int, out: TextIO | None = None) -> None:
        self._out = out or sys.stderr
        self._label = label
        self._total = total
        self._done = 0
        self._shown = -1.0
        self.active = total >= PROGRESS_FROM and self._out.isatty()

    def advance(self, n: int) -> None:
        self._done += n
        if not self.active:
            return
        now = time.monotonic()
        if now - self._shown >= 0.1 or self._done >= self._total:
            self._shown = now
            share = min(1.0, self._done / self._total) if self._total else 1.0
            bar = "#" * int(share * 30)
            self._out.write(
                f"\r{self._label} [{bar:<30}] {share:4.0%} {size(self._done)} / {size(self._total)}"
            )
            self._out.flush()

    def finish(self) -> None:
        if self.active and self._shown >= 0:
            self._out.write("\n")
            self._out.flush()


# ---- bodies -------------------------------------------------------------------------------


def _body(value: str | None, *, what: str = "body", piped: bool = False) -> tuple[bytes, bool]:
    """A body as ``nats pub`` users give it: text, ``@file``, ``-`` (stdin), or nothing, which
    with ``piped`` reads stdin when it is not a terminal (``pub`` only: a ``req`` inside a
    ``while read`` loop must not swallow the loop's input).

    Returns the bytes and whether they are literal text (where ``{{Count}}`` is expanded).
    """
    if value is None:
        if not piped or sys.stdin is None or sys.stdin.isatty():
            return b"", True
        return sys.stdin.buffer.read(), False
    if value == "-":
        return sys.stdin.buffer.read(), False
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_bytes(), False
        except OSError as exc:
            raise UsageError(f"cannot read the {what} from {str(path)!r}: {exc.strerror}") from exc
    return value.encode(), True


# ---- core ---------------------------------------------------------------------------------


async def cmd_pub(client: Client, args: argparse.Namespace) -> int:
    headers = _header_args(args.header)
    body, literal = _body(args.data, piped=True)
    for i in range(args.count):
        data = body.replace(b"{{Count}}", str(i + 1).encode()) if literal else body
        await client.publish(args.subject, data, headers=headers)
    emit(
        args,
        f"published {args.count} message(s) to {args.subject}"
        + ("" if literal else f" ({size(len(body))} each)"),
        {"subject": args.subject, "published": args.count, "bytes": len(body)},
    )
    return 0


def _show_msg(args: argparse.Namespace, msg: Msg) -> None:
    emit(
        args,
        f"[#{msg.sequence}] {_when(msg.timestamp)} {msg.subject}"
        + (f" (reply to {msg.reply_to})" if msg.reply_to else "")
        + _headers(msg.headers)
        + f"\n{_text(msg.data)}\n",
        {
            "subject": msg.subject,
            "data": msg.data,
            "headers": msg.headers,
            "reply_to": msg.reply_to,
            "sequence": msg.sequence,
            "timestamp": msg.timestamp,
        },
    )


async def cmd_sub(client: Client, args: argparse.Namespace) -> int:
    seen = 0
    async with client.subscribe(args.subject, queue_group=args.queue) as sub:
        print(f"subscribed to {args.subject}", file=sys.stderr, flush=True)
        async for msg in sub:
            _show_msg(args, msg)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


async def cmd_req(client: Client, args: argparse.Namespace) -> int:
    headers = _header_args(args.header)
    body, _ = _body(args.data)
    reply = await client.request(args.subject, body, timeout=args.timeout, headers=headers)
    emit(
        args,
        _text(reply.data) + _headers(reply.headers),
        {"data": reply.data, "headers": reply.headers},
    )
    return 0


async def cmd_reply(client: Client, args: argparse.Namespace) -> int:
    served = 0
    async with client.subscribe(args.subject, queue_group=args.queue) as sub:
        print(f"answering requests on {args.subject}", file=sys.stderr, flush=True)
        async for msg in sub:
            if not msg.reply_to:
                continue
            answer = msg.data if args.echo else args.response.encode()
            await client.publish(msg.reply_to, answer)
            served += 1
            emit(
                args,
                f"[#{served}] {msg.subject}: {_text(msg.data)} -> {_text(answer)}",
                {"subject": msg.subject, "request": msg.data, "reply": answer},
            )
            if args.count and served >= args.count:
                break
    return 0


# ---- JetStream ----------------------------------------------------------------------------


def _stream_line(info: StreamInfo) -> str:
    state, cfg = info.state, info.config
    subjects = ", ".join(cfg.subjects) if cfg else ""
    messages = f"{state.messages} msgs, {size(state.bytes)}" if state else ""
    return f"{info.name:<24} {messages:<24} {subjects}"


async def cmd_stream_ls(client: Client, args: argparse.Namespace) -> int:
    streams = await client.streams()
    return _listing(args, {"streams": streams}, streams, "no streams", _stream_line)


async def cmd_stream_add(client: Client, args: argparse.Namespace) -> int:
    config = StreamConfig(
        storage=StorageType.STORAGE_MEMORY
        if args.storage == "memory"
        else StorageType.STORAGE_FILE,
        max_msgs=args.max_msgs,
        max_bytes=args.max_bytes,
        max_age=datetime.timedelta(seconds=args.max_age) if args.max_age else None,
    )
    info = await client.create_stream(args.name, args.subjects.split(","), config=config)
    emit(args, "created " + _stream_line(info), {"stream": info})
    return 0


async def cmd_stream_info(client: Client, args: argparse.Namespace) -> int:
    info = await client.stream_info(args.name)
    if args.json:
        emit(args, "", {"stream": info})
        return 0
    cfg, state = info.config, info.state
    print(f"stream {info.name}, created {info.created}")
    if cfg:
        print(f"  subjects: {', '.join(cfg.subjects)}")
        limit = size(cfg.max_bytes) if cfg.max_bytes > 0 else "unlimited"
        print(f"  storage: {cfg.storage.name}, max_msgs {cfg.max_msgs}, max_bytes {limit}")
    if state:
        print(f"  messages: {state.messages} ({size(state.bytes)})")
        print(f"  sequences: {state.first_seq}..{state.last_seq}")
        print(f"  consumers: {state.consumer_count}")
    return 0


async def cmd_stream_rm(client: Client, args: argparse.Namespace) -> int:
    await client.delete_stream(args.name)
    emit(args, f"deleted stream {args.name}", {"deleted": args.name})
    return 0


def _consumer_line(info: ConsumerInfo) -> str:
    state = info.state
    pending = (
        f"{state.num_pending} pending, acked to {state.ack_floor_seq}, "
        f"{state.num_redelivered} redelivered"
        if state
        else ""
    )
    return f"{info.name:<24} {pending}"


async def cmd_consumer_ls(client: Client, args: argparse.Namespace) -> int:
    consumers = await client.consumers(args.stream)
    empty = f"no consumers on stream {args.stream}"
    return _listing(args, {"consumers": consumers}, consumers, empty, _consumer_line)


async def cmd_consumer_info(client: Client, args: argparse.Namespace) -> int:
    info = await client.consumer_info(args.stream, args.name)
    if args.json:
        emit(args, "", {"consumer": info})
        return 0
    cfg, state = info.config, info.state
    print(f"consumer {info.name} on stream {info.stream_name}, created {info.created}")
    if cfg:
        wait = cfg.ack_wait.total_seconds() if cfg.ack_wait else 30.0
        subjects = cfg.filter_subject or "(all)"
        print(f"  filter: {subjects}, ack {cfg.ack_policy.name}, wait {wait:g} s")
    if state:
        print(f"  delivered to {state.delivered_seq}, acked to {state.ack_floor_seq}")
        print(f"  pending: {state.num_pending}, redelivered: {state.num_redelivered}")
    return 0


async def cmd_consumer_rm(client: Client, args: argparse.Namespace) -> int:
    await client.delete_consumer(args.stream, args.name)
    emit(args, f"deleted consumer {args.name}", {"deleted": args.name, "stream": args.stream})
    return 0


async def cmd_consume(client: Client, args: argparse.Namespace) -> int:
    with contextlib.suppress(AlreadyExists):  # exists with another configuration: use it
        await client.create_consumer(args.stream, args.consumer)
    seen = 0

    def show(msg: JsMsg) -> None:
        emit(
            args,
            f"[{msg.sequence}] {_when(msg.timestamp)} {msg.subject} "
            f"(delivery {msg.num_delivered}, {msg.num_pending} pending)"
            + _headers(msg.headers)
            + f"\n{_text(msg.data)}\n",
            {
                "subject": msg.subject,
                "data": msg.data,
                "headers": msg.headers,
                "sequence": msg.sequence,
                "num_delivered": msg.num_delivered,
                "num_pending": msg.num_pending,
                "timestamp": msg.timestamp,
            },
        )

    # Leaving the block releases (naks) what was delivered but not acked: with --count the
    # rest of a fetched window goes straight back to the stream, not after ack_wait.
    window = min(args.window, args.count) if args.count else args.window
    async with client.consume(args.stream, args.consumer, max_messages=window) as messages:
        async for msg in messages:
            show(msg)
            if not args.no_ack:
                msg.ack()
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


# ---- KV -----------------------------------------------------------------------------------


def _entry(args: argparse.Namespace, entry: KvEntry) -> None:
    deleted = entry.operation is not KvOperation.PUT
    emit(
        args,
        f"{entry.key} @ {entry.revision}: "
        + (entry.operation.name if deleted else _text(entry.value)),
        {
            "key": entry.key,
            "value": entry.value,
            "revision": entry.revision,
            "operation": entry.operation,
            "created": entry.created,
        },
    )


async def cmd_kv_get(client: Client, args: argparse.Namespace) -> int:
    entry = await client.kv_get(args.bucket, args.key, revision=args.revision)
    if entry is None:
        await client.kv_bucket_status(args.bucket)  # a missing bucket says so (NotFound)
        raise NotFound(f"key {args.key!r} not found in bucket {args.bucket!r}")
    _entry(args, entry)
    return 0


async def cmd_kv_put(client: Client, args: argparse.Namespace) -> int:
    value, _ = _body(args.value, what="value")
    revision = await client.kv_put(args.bucket, args.key, value)
    emit(args, f"{args.key} @ {revision}", {"key": args.key, "revision": revision})
    return 0


async def cmd_kv_del(client: Client, args: argparse.Namespace) -> int:
    await client.kv_delete(args.bucket, args.key, purge=args.purge)
    what = "purged" if args.purge else "deleted"
    emit(args, f"{what} {args.key}", {"key": args.key, what: True})
    return 0


async def cmd_kv_keys(client: Client, args: argparse.Namespace) -> int:
    keys = await client.kv_keys(args.bucket)
    if not keys:  # the gateway lists a missing bucket as empty: say which it is
        await client.kv_bucket_status(args.bucket)  # NotFound names the bucket
    record = {"bucket": args.bucket, "keys": keys}
    return _listing(args, record, keys, f"no keys in bucket {args.bucket}", str)


async def cmd_kv_history(client: Client, args: argparse.Namespace) -> int:
    history = await client.kv_history(args.bucket, args.key)
    if not history:
        await client.kv_bucket_status(args.bucket)  # a missing bucket says so (NotFound)
        raise NotFound(f"key {args.key!r} has no history in bucket {args.bucket!r}")
    for entry in history:
        _entry(args, entry)
    return 0


def _bucket_line(info: KvBucketInfo) -> str:
    held = size(info.bytes)
    return f"{info.bucket:<24} {info.values:>8} values  {held:>10}  history {info.history}"


async def cmd_kv_ls(client: Client, args: argparse.Namespace) -> int:
    if args.bucket:
        status = await client.kv_bucket_status(args.bucket)
        emit(args, _bucket_line(status), {"bucket": status})
        return 0
    buckets = await client.kv_buckets()
    return _listing(args, {"buckets": buckets}, buckets, "no buckets", _bucket_line)


async def cmd_kv_watch(client: Client, args: argparse.Namespace) -> int:
    seen = 0
    async with client.kv_watch(args.bucket, args.key, updates_only=args.updates_only) as watch:
        async for entry in watch:
            _entry(args, entry)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


# ---- objects ------------------------------------------------------------------------------


def _object_line(info: ObjectInfo) -> str:
    modified = info.modified.astimezone().strftime("%Y-%m-%d %H:%M:%S") if info.modified else ""
    return f"{info.name:<32} {size(info.size):>10}  {modified}  {info.digest}"


async def _reading(path: Path, progress: Progress) -> AsyncIterator[bytes]:
    with open(path, "rb") as handle:  # noqa: ASYNC230 - reads below go through a thread
        while chunk := await asyncio.to_thread(handle.read, 256 * 1024):
            progress.advance(len(chunk))
            yield chunk


def _readable_size(path: Path) -> int:
    try:
        if path.is_dir():
            raise UsageError(f"{str(path)!r} is a directory, not a file")
        with open(path, "rb") as handle:
            return os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc.strerror}") from exc


async def cmd_obj_put(client: Client, args: argparse.Namespace) -> int:
    path = Path(args.file)
    total = _readable_size(path)  # a local problem is said before anything goes to the gateway
    progress = Progress(f"put {path.name}", total)
    try:
        source = _reading(path, progress)
        info = await client.put_object(args.bucket, args.name or path.name, source)
    finally:
        progress.finish()
    emit(args, "stored " + _object_line(info), {"object": info})
    return 0


def _download_target(args: argparse.Namespace) -> Path:
    """Where ``obj get`` writes: ``-o``, else the object name's last part in this directory
    (an object named ``../x`` or ``reports/x`` writes ``./x``, never outside it); checked
    before anything is asked of the gateway."""
    if args.output:
        target = Path(args.output)
    else:
        base = Path(args.name).name
        if base in ("", ".", ".."):
            raise UsageError(f"object name {args.name[:40]!r} is no file name: give -o FILE")
        target = Path(base)
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {str(target)!r}: {str(folder)!r} is not a directory")
    if target.is_dir():
        raise UsageError(f"cannot write {str(target)!r}: it is a directory")
    return target


async def cmd_obj_get(client: Client, args: argparse.Namespace) -> int:
    target = None if args.output == "-" else _download_target(args)
    async with client.get_object(args.bucket, args.name) as obj:
        progress = Progress(f"get {args.name}", obj.info.size)
        try:
            if target is None:
                async for chunk in obj:
                    sys.stdout.buffer.write(chunk)
                    progress.advance(len(chunk))
                sys.stdout.buffer.flush()
                return 0
            try:
                await obj.save(target, on_chunk=progress.advance)
            except OSError as exc:  # the local file (the gateway's failures are NatsgwError)
                raise UsageError(f"cannot write {str(target)!r}: {exc.strerror}") from exc
        finally:
            progress.finish()
    emit(
        args,
        f"wrote {size(obj.info.size)} to {target}",
        {"object": obj.info, "path": str(target)},
    )
    return 0


async def cmd_obj_ls(client: Client, args: argparse.Namespace) -> int:
    objects = await client.objects(args.bucket)  # a missing bucket: NotFound (exit 1)
    empty = f"no objects in bucket {args.bucket}"
    return _listing(args, {"objects": objects}, objects, empty, _object_line)


async def cmd_obj_info(client: Client, args: argparse.Namespace) -> int:
    found = [o for o in await client.objects(args.bucket) if o.name == args.name]
    if not found:
        raise NotFound(f"object {args.name!r} not found in bucket {args.bucket!r}")
    info = found[0]
    if args.json:
        emit(args, "", {"object": info})
        return 0
    print(f"object {info.name} in bucket {args.bucket}")
    print(f"  size: {size(info.size)} ({info.size} bytes)")
    print(f"  modified: {info.modified}")
    print(f"  digest: {info.digest}")
    for key, value in sorted(info.metadata.items()):
        print(f"  {key}: {value}")
    return 0


async def cmd_obj_rm(client: Client, args: argparse.Namespace) -> int:
    await client.delete_object(args.bucket, args.name)
    emit(args, f"deleted {args.name}", {"deleted": args.name, "bucket": args.bucket})
    return 0


async def cmd_smoke(client: Client, args: argparse.Namespace) -> int:
    report = await smoke.run(client, sys.stdout, timeout=args.timeout, as_json=args.json)
    if args.json:
        print(json.dumps({"passed": report.passed}), flush=True)
    print("smoke test passed" if report.passed else "smoke test FAILED", file=sys.stderr)
    if not report.passed and (hint := report.hint()):
        print(f"natsgw: {hint}", file=sys.stderr)
    return 0 if report.passed else 1


# ---- wiring -------------------------------------------------------------------------------


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=os.environ.get("NATSGW_TARGET", f"127.0.0.1:{DEFAULT_PORT}"),
        help="gateway host:port, or just a port on this machine (NATSGW_TARGET; "
        "default %(default)s)",
    )
    group.add_argument(
        "--token",
        default=None,
        help="bearer token or JWT for token/jwt mode; visible to other users in ps, so prefer "
        "NATSGW_TOKEN or --token-file",
    )
    group.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="read the token from this file (NATSGW_TOKEN_FILE)",
    )
    group.add_argument(
        "--user-id",
        default=os.environ.get("NATSGW_USER_ID", ""),
        help="who you are in trusted mode, or whom to act for (NATSGW_USER_ID; "
        "default in trusted mode: your login name)",
    )
    group.add_argument("--org", default="", help="work in this organization's namespace")
    group.add_argument("--tls", action="store_true", help="use TLS (system CAs unless --ca-file)")
    group.add_argument("--ca-file", help="CA bundle that signed the gateway's certificate")
    group.add_argument("--cert-file", help="client certificate (mutual TLS)")
    group.add_argument("--key-file", help="client certificate's key")
    group.add_argument("--json", action="store_true", help="one JSON object per line")


def _command(sub: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    _connection_options(parser)
    parser.set_defaults(client_command=handler)
    return parser


BODY_HELP = "text ({{Count}} is the message number), @FILE, or - for stdin; default: piped stdin"


def add_commands(sub: Any) -> None:
    """Register the client commands on ``natsgw``'s subparsers."""
    p = _command(sub, "pub", cmd_pub, "publish a message")
    p.add_argument("subject")
    p.add_argument("data", nargs="?", default=None, help=BODY_HELP)
    p.add_argument("-H", "--header", action="append", default=[], metavar="K:V")
    p.add_argument("--count", type=int, default=1)

    p = _command(sub, "sub", cmd_sub, "print messages on a subject (wildcards * and >)")
    p.add_argument("subject")
    p.add_argument("--queue", default="", help="join this queue group")
    p.add_argument("--count", type=int, default=0, help="stop after N messages")

    p = _command(sub, "req", cmd_req, "send a request and print the reply")
    p.add_argument("subject")
    p.add_argument("data", nargs="?", default=None, help="text, @FILE, or - for stdin")
    p.add_argument("-H", "--header", action="append", default=[], metavar="K:V")
    p.add_argument("--timeout", type=float, default=5.0)

    p = _command(sub, "reply", cmd_reply, "answer requests on a subject")
    p.add_argument("subject")
    p.add_argument("response", nargs="?", default="")
    p.add_argument("--echo", action="store_true", help="answer with the request's body")
    p.add_argument("--queue", default="")
    p.add_argument("--count", type=int, default=0, help="stop after N requests")

    stream = sub.add_parser("stream", help="JetStream streams: ls, add, info, rm")
    ss = stream.add_subparsers(dest="stream_command", required=True)
    _command(ss, "ls", cmd_stream_ls, "list your streams")
    p = _command(ss, "add", cmd_stream_add, "create a stream")
    p.add_argument("name")
    p.add_argument("--subjects", required=True, help="comma-separated, wildcards allowed")
    p.add_argument("--storage", choices=("file", "memory"), default="file")
    p.add_argument("--max-msgs", type=int, default=0)
    p.add_argument("--max-bytes", type=int, default=0)
    p.add_argument("--max-age", type=float, default=0, help="seconds")
    p = _command(ss, "info", cmd_stream_info, "show a stream")
    p.add_argument("name")
    p = _command(ss, "rm", cmd_stream_rm, "delete a stream")
    p.add_argument("name")

    consumer = sub.add_parser("consumer", help="JetStream consumers: ls, info, rm")
    cs = consumer.add_subparsers(dest="consumer_command", required=True)
    p = _command(cs, "ls", cmd_consumer_ls, "list a stream's consumers")
    p.add_argument("stream")
    p = _command(cs, "info", cmd_consumer_info, "show a consumer")
    p.add_argument("stream")
    p.add_argument("name")
    p = _command(cs, "rm", cmd_consumer_rm, "delete a consumer")
    p.add_argument("stream")
    p.add_argument("name")

    p = _command(sub, "consume", cmd_consume, "print (and ack) a stream's messages")
    p.add_argument("stream")
    p.add_argument("consumer", nargs="?", default="natsgw-cli", help="durable name (made if new)")
    p.add_argument("--count", type=int, default=0, help="stop after N messages")
    p.add_argument("--window", type=int, default=100, help="most unacknowledged at once")
    p.add_argument(
        "--no-ack", action="store_true", help="do not ack: release them for redelivery at exit"
    )

    kv = sub.add_parser("kv", help="Key-Value: get, put, del, keys, history, ls, watch")
    ks = kv.add_subparsers(dest="kv_command", required=True)
    p = _command(ks, "get", cmd_kv_get, "print a key's value")
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("--revision", type=int, default=0)
    p = _command(ks, "put", cmd_kv_put, "set a key (the bucket is made on first put)")
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("value", help="text, @FILE, or - for stdin")
    p = _command(ks, "del", cmd_kv_del, "delete a key (its history stays unless --purge)")
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("--purge", action="store_true", help="also remove the key's history")
    p = _command(ks, "keys", cmd_kv_keys, "list a bucket's keys")
    p.add_argument("bucket")
    p = _command(ks, "history", cmd_kv_history, "print every stored revision of a key")
    p.add_argument("bucket")
    p.add_argument("key")
    p = _command(ks, "ls", cmd_kv_ls, "list your buckets (or show one)")
    p.add_argument("bucket", nargs="?", default="")
    p = _command(ks, "watch", cmd_kv_watch, "print current values, then every change")
    p.add_argument("bucket")
    p.add_argument("key", nargs="?", default="", help="key or pattern (* and >); default all")
    p.add_argument("--updates-only", action="store_true")
    p.add_argument("--count", type=int, default=0, help="stop after N entries")

    obj = sub.add_parser("obj", help="Object store: put, get, ls, info, rm")
    os_ = obj.add_subparsers(dest="obj_command", required=True)
    p = _command(os_, "put", cmd_obj_put, "upload a file (streamed, any size)")
    p.add_argument("bucket")
    p.add_argument("file")
    p.add_argument("--name", help="object name (default: the file's name)")
    p = _command(os_, "get", cmd_obj_get, "download an object")
    p.add_argument("bucket")
    p.add_argument("name")
    p.add_argument(
        "-o",
        "--output",
        help="file to write ('-' for stdout; default: the name's last part, here)",
    )
    p = _command(os_, "ls", cmd_obj_ls, "list a bucket's objects")
    p.add_argument("bucket")
    p = _command(os_, "info", cmd_obj_info, "show an object's size, digest and metadata")
    p.add_argument("bucket")
    p.add_argument("name")
    p = _command(os_, "rm", cmd_obj_rm, "delete an object")
    p.add_argument("bucket")
    p.add_argument("name")

    p = _command(
        sub, "smoke", cmd_smoke, "call every RPC of a running gateway once; exit 1 on failure"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per RPC (default 10)")


def _read_token_file(path: str, origin: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the token file {path!r} ({origin}): {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"the token file {path!r} ({origin}) is not text") from exc
    if not token:
        raise UsageError(f"the token file {path!r} ({origin}) is empty")
    return token


def token_of(args: argparse.Namespace, environ: dict[str, str] | None = None) -> str:
    """The token, from (first found) --token, --token-file, NATSGW_TOKEN, NATSGW_TOKEN_FILE.

    ``--token`` on the command line is visible to every user in ``ps``: it works, with a warning.
    """
    env = os.environ if environ is None else environ
    if args.token is not None:
        print(
            "natsgw: warning: --token on the command line is visible to other users (ps, shell "
            "history); use NATSGW_TOKEN or --token-file PATH instead",
            file=sys.stderr,
        )
        return str(args.token)
    if args.token_file:
        return _read_token_file(args.token_file, "--token-file")
    if env.get("NATSGW_TOKEN"):
        return env["NATSGW_TOKEN"]
    if env.get("NATSGW_TOKEN_FILE"):
        return _read_token_file(env["NATSGW_TOKEN_FILE"], "NATSGW_TOKEN_FILE")
    return ""


def _hint(exc: NatsgwError, args: argparse.Namespace, token: str) -> str:
    """What to try next, for the failures a new user meets first."""
    name = exc.status.name
    if name == "UNAUTHENTICATED":
        if token:
            return "the gateway refused the token: check NATSGW_TOKEN / --token-file"
        return (
            "this gateway wants a token: set NATSGW_TOKEN or pass --token-file PATH "
            "(trusted mode: --user-id)"
        )
    if name == "PERMISSION_DENIED":
        return (
            "the credentials are valid but not allowed to do this: another token "
            "(NATSGW_TOKEN / --token-file) or --user-id"
        )
    if isinstance(exc, Unavailable) and "connection to the gateway failed" in exc.message:
        host, port = parse_target(args.target)
        return f"is a gateway listening at {host}:{port}? (--target or NATSGW_TARGET)"
    return ""


def _fail(args: argparse.Namespace, status: str, message: str, hint: str = "") -> None:
    if getattr(args, "json", False):
        record = {"error": status, "message": message} | ({"hint": hint} if hint else {})
        print(json.dumps(record, sort_keys=True), file=sys.stderr)
        return
    print(f"natsgw: {status}: {message}" if status else f"natsgw: {message}", file=sys.stderr)
    if hint:
        print(f"natsgw: {hint}", file=sys.stderr)


def _quiet_stdout() -> None:
    """The reader went away (``| head``): later writes, and the interpreter's final flush, go
    nowhere instead of raising BrokenPipeError."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def run(args: argparse.Namespace) -> int:
    """Run the client command ``args`` names; the exit status of ``natsgw``.

    0 done; 1 the gateway refused or failed (status and message on stderr); 2 a local problem
    (unreadable file, bad argument); 130/143 interrupted by SIGINT/SIGTERM (streams are ended on
    the gateway before exiting); 141 the reader of stdout went away.
    """
    handler: Handler = args.client_command
    token = ""
    try:
        token = token_of(args)
        user_id = args.user_id
        if not user_id and not token:
            user_id = getpass.getuser()  # trusted mode needs someone; a token names its own
        terminated: list[int] = []

        async def main() -> int:
            task = asyncio.current_task()
            assert task is not None
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError):

                def stop() -> None:
                    terminated.append(signal.SIGTERM)
                    task.cancel()

                loop.add_signal_handler(signal.SIGTERM, stop)
            async with Client(
                args.target,
                token=token,
                user_id=user_id,
                organization_id=args.org,
                tls=args.tls,
                ca_file=args.ca_file,
                cert_file=args.cert_file,
                key_file=args.key_file,
                stream_retry=CLI_STREAM_RETRY,
            ) as client:
                return await handler(client, args)

        try:
            return asyncio.run(main())
        except asyncio.CancelledError:
            if terminated:
                return 128 + signal.SIGTERM
            raise
    except NatsgwError as exc:
        _fail(args, exc.status.name, exc.message, _hint(exc, args, token))
        return 1
    except UsageError as exc:
        _fail(args, "", str(exc))
        return 2
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except KeyboardInterrupt:
        return 130
