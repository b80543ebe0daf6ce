"""Try-it commands in the manner of the ``nats`` CLI, on natsgw.client: ``natsgw pub``, ``sub`` ...

Every command takes ``--target`` and credentials (also from ``NATSGW_TARGET``, ``NATSGW_TOKEN``,
``NATSGW_USER_ID``), prints for people on a terminal, and one JSON object per line with
``--json``. Failures print the gRPC status and the gateway's message and exit 1.
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
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from natsgw.client import smoke
from natsgw.client.client import DEFAULT_PORT, Client
from natsgw.client.errors import AlreadyExists, NatsgwError
from natsgw.client.types import (
    JsMsg,
    KvEntry,
    KvOperation,
    Msg,
    ObjectInfo,
    StorageType,
    StreamConfig,
    StreamInfo,
)

Handler = Callable[[Client, argparse.Namespace], Awaitable[int]]

#: Environment variables the commands read (the gateway's settings ignore them).
CLIENT_VARIABLES = ("NATSGW_TARGET", "NATSGW_TOKEN", "NATSGW_USER_ID")


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


def _when(ts: datetime.datetime | None) -> str:
    return ts.astimezone().strftime("%H:%M:%S.%f")[:-3] if ts else "--:--:--"


def _headers(headers: dict[str, str]) -> str:
    return "".join(f"\n    {k}: {v}" for k, v in sorted(headers.items()))


# ---- core ---------------------------------------------------------------------------------


async def cmd_pub(client: Client, args: argparse.Namespace) -> int:
    headers = dict(h.split(":", 1) for h in args.header)
    for i in range(args.count):
        body = args.data.replace("{{Count}}", str(i + 1)).encode()
        await client.publish(args.subject, body, headers=headers)
    emit(
        args,
        f"published {args.count} message(s) to {args.subject}",
        {"subject": args.subject, "published": args.count},
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
    headers = dict(h.split(":", 1) for h in args.header)
    reply = await client.request(
        args.subject, args.data.encode(), timeout=args.timeout, headers=headers
    )
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
    messages = f"{state.messages} msgs, {state.bytes} B" if state else ""
    return f"{info.name:<24} {messages:<24} {subjects}"


async def cmd_stream_ls(client: Client, args: argparse.Namespace) -> int:
    streams = await client.streams()
    if args.json:
        emit(args, "", {"streams": [s for s in streams]})
    elif not streams:
        print("no streams")
    else:
        for info in streams:
            print(_stream_line(info))
    return 0


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
        print(f"  storage: {cfg.storage.name}, max_msgs {cfg.max_msgs}, max_bytes {cfg.max_bytes}")
    if state:
        print(f"  messages: {state.messages} ({state.bytes} B)")
        print(f"  sequences: {state.first_seq}..{state.last_seq}")
        print(f"  consumers: {state.consumer_count}")
    return 0


async def cmd_stream_rm(client: Client, args: argparse.Namespace) -> int:
    await client.delete_stream(args.name)
    emit(args, f"deleted stream {args.name}", {"deleted": args.name})
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

    async with client.consume(args.stream, args.consumer, max_messages=args.window) as messages:
        async for msg in messages:
            show(msg)
            if not args.no_ack:
                msg.ack()
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


# ---- KV and objects -----------------------------------------------------------------------


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
        print(f"natsgw: key {args.key!r} not found in bucket {args.bucket!r}", file=sys.stderr)
        return 1
    _entry(args, entry)
    return 0


async def cmd_kv_put(client: Client, args: argparse.Namespace) -> int:
    revision = await client.kv_put(args.bucket, args.key, args.value.encode())
    emit(args, f"{args.key} @ {revision}", {"key": args.key, "revision": revision})
    return 0


async def cmd_kv_watch(client: Client, args: argparse.Namespace) -> int:
    seen = 0
    async with client.kv_watch(args.bucket, args.key, updates_only=args.updates_only) as watch:
        async for entry in watch:
            _entry(args, entry)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


def _object_line(info: ObjectInfo) -> str:
    return f"{info.name:<32} {info.size:>12} B  {info.modified}  {info.digest}"


async def cmd_obj_put(client: Client, args: argparse.Namespace) -> int:
    path = Path(args.file)
    info = await client.put_object(args.bucket, args.name or path.name, path)
    emit(args, "stored " + _object_line(info), {"object": info})
    return 0


async def cmd_obj_get(client: Client, args: argparse.Namespace) -> int:
    if args.output == "-":
        async with client.get_object(args.bucket, args.name) as obj:
            async for chunk in obj:
                sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return 0
    info = await client.download(args.bucket, args.name, args.output or args.name)
    emit(
        args,
        f"wrote {info.size} B to {args.output or args.name}",
        {"object": info, "path": args.output or args.name},
    )
    return 0


async def cmd_obj_ls(client: Client, args: argparse.Namespace) -> int:
    objects = await client.objects(args.bucket)
    if args.json:
        emit(args, "", {"objects": objects})
    elif not objects:
        print("no objects")
    else:
        for info in objects:
            print(_object_line(info))
    return 0


async def cmd_smoke(client: Client, args: argparse.Namespace) -> int:
    ok = await smoke.run(client, sys.stdout, timeout=args.timeout)
    print("smoke test passed" if ok else "smoke test FAILED", file=sys.stderr)
    return 0 if ok else 1


# ---- wiring -------------------------------------------------------------------------------


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=os.environ.get("NATSGW_TARGET", f"127.0.0.1:{DEFAULT_PORT}"),
        help="gateway host:port (NATSGW_TARGET; default %(default)s)",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("NATSGW_TOKEN", ""),
        help="bearer token or JWT for token/jwt mode (NATSGW_TOKEN)",
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


def add_commands(sub: Any) -> None:
    """Register the client commands on ``natsgw``'s subparsers."""
    p = _command(sub, "pub", cmd_pub, "publish a message")
    p.add_argument("subject")
    p.add_argument("data", nargs="?", default="", help="body ({{Count}} is the message number)")
    p.add_argument("-H", "--header", action="append", default=[], metavar="K:V")
    p.add_argument("--count", type=int, default=1)

    p = _command(sub, "sub", cmd_sub, "print messages on a subject (wildcards * and >)")
    p.add_argument("subject")
    p.add_argument("--queue", default="", help="join this queue group")
    p.add_argument("--count", type=int, default=0, help="stop after N messages")

    p = _command(sub, "req", cmd_req, "send a request and print the reply")
    p.add_argument("subject")
    p.add_argument("data", nargs="?", default="")
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

    p = _command(sub, "consume", cmd_consume, "print (and ack) a stream's messages")
    p.add_argument("stream")
    p.add_argument("consumer", nargs="?", default="natsgw-cli", help="durable name (made if new)")
    p.add_argument("--count", type=int, default=0, help="stop after N messages")
    p.add_argument("--window", type=int, default=100, help="most unacknowledged at once")
    p.add_argument("--no-ack", action="store_true", help="leave them to be redelivered")

    kv = sub.add_parser("kv", help="Key-Value: get, put, watch")
    ks = kv.add_subparsers(dest="kv_command", required=True)
    p = _command(ks, "get", cmd_kv_get, "print a key's value")
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("--revision", type=int, default=0)
    p = _command(ks, "put", cmd_kv_put, "set a key (the bucket is made on first put)")
    p.add_argument("bucket")
    p.add_argument("key")
    p.add_argument("value")
    p = _command(ks, "watch", cmd_kv_watch, "print current values, then every change")
    p.add_argument("bucket")
    p.add_argument("key", nargs="?", default="", help="key or pattern (* and >); default all")
    p.add_argument("--updates-only", action="store_true")
    p.add_argument("--count", type=int, default=0, help="stop after N entries")

    obj = sub.add_parser("obj", help="Object store: put, get, ls")
    os_ = obj.add_subparsers(dest="obj_command", required=True)
    p = _command(os_, "put", cmd_obj_put, "upload a file (streamed, any size)")
    p.add_argument("bucket")
    p.add_argument("file")
    p.add_argument("--name", help="object name (default: the file's name)")
    p = _command(os_, "get", cmd_obj_get, "download an object")
    p.add_argument("bucket")
    p.add_argument("name")
    p.add_argument("-o", "--output", help="file to write ('-' for stdout; default: the name)")
    p = _command(os_, "ls", cmd_obj_ls, "list a bucket's objects")
    p.add_argument("bucket")

    p = _command(
        sub, "smoke", cmd_smoke, "call every RPC of a running gateway once; exit 1 on failure"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per RPC (default 10)")


def run(args: argparse.Namespace) -> int:
    """Run the client command ``args`` names; the exit status of ``natsgw``."""
    handler: Handler = args.client_command
    user_id = args.user_id
    if not user_id and not args.token:
        user_id = getpass.getuser()  # trusted mode needs someone; a token names its own

    async def main() -> int:
        async with Client(
            args.target,
            token=args.token,
            user_id=user_id,
            organization_id=args.org,
            tls=args.tls,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
        ) as client:
            return await handler(client, args)

    try:
        return asyncio.run(main())
    except NatsgwError as exc:
        print(f"natsgw: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
