"""``sluice``: append, read, tail and administer streams from a terminal or a script.

Over 500 lines because it is one command per function (append, read, tail, publish,
streams, groups) with its table output and the argument parser that names them all: a
reader finds any command beside the others."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from google.protobuf import json_format

from sluice.client import (
    ANY,
    END,
    NO_STREAM,
    START,
    STREAM_EXISTS,
    Client,
    Expected,
    Position,
    Revision,
    StartAt,
    new_event,
)
from sluice.errors import SluiceError, StreamNotFound
from sluice.gateway import DEFAULT_GATEWAY_ADDR, GatewayClient
from sluice.settings import format_duration, parse_duration
from sluice.v1 import gateway_pb2 as gwpb
from sluice.v1 import streams_pb2 as pb


def parse_start(text: str | None) -> StartAt:
    """``start``, ``end``, ``rev:N``, ``pos:N``, an ISO-8601 time, or ``-5m`` (that long ago)."""
    if text is None:
        return None
    if text in (START, END):
        return text
    usage = f"start point {text!r}: use start, end, rev:N, pos:N, an ISO time or -5m"
    kind, sep, value = text.partition(":")
    if sep and kind in ("rev", "revision", "pos", "position"):
        if not value.isdigit() or int(value) >= 1 << 63:
            raise argparse.ArgumentTypeError(f"{usage} (N a whole number)")
        return Revision(int(value)) if kind.startswith("rev") else Position(int(value))
    try:
        if text.startswith("-"):
            return datetime.now(UTC) - timedelta(seconds=parse_duration(text[1:]))
        when = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(usage) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def count(text: str) -> int:
    """A count or size: a whole number, 0 or more."""
    if not text.isdigit() or int(text) >= 1 << 63:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def at_least_one(text: str) -> int:
    """A count that 0 would not mean (a group's partitions: 0 on the wire is the default)."""
    n = count(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1, got {text!r}")
    return n


def duration(text: str) -> float:
    """A duration flag: 30s, 5m, 7d, 250ms or seconds."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def key_value(text: str) -> tuple[str, str]:
    """A --meta KEY=VALUE."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_expected(text: str) -> Expected:
    named = {"any": ANY, "no_stream": NO_STREAM, "exists": STREAM_EXISTS, "stream_exists": STREAM_EXISTS}
    if text in named:
        return named[text]
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected revision {text!r}: use any, no_stream, exists or a number"
        ) from None


def event_json(ev: pb.RecordedEvent) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(ev, preserving_proto_field_name=True)
    out.pop("data", None)
    if ev.data:
        try:
            out["data"] = json.loads(ev.data)
        except ValueError:
            try:
                out["data"] = ev.data.decode()
            except UnicodeDecodeError:
                out["data_base64"] = base64.b64encode(ev.data).decode()
    out["revision"], out["position"] = ev.revision, ev.position
    return out


def table(rows: Sequence[Sequence[object]], headers: Sequence[str], out: TextIO = sys.stdout) -> None:
    """Print rows as aligned columns under a header."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _preview(data: bytes, width: int = 60) -> str:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        text = f"<{len(data)} bytes>"
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(ev: pb.RecordedEvent) -> str:
    return ev.created.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


EVENT_HEADERS = ("position", "stream", "revision", "type", "created (UTC)", "data")


def _event_row(ev: pb.RecordedEvent) -> tuple[object, ...]:
    return (ev.position, ev.stream, ev.revision, ev.type, _when(ev), _preview(ev.data))


class Progress:
    """A one-line progress display on stderr for long reads, when stderr is a terminal."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self.count = 0
        self.started = time.monotonic()
        self._shown = 0.0

    def add(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self._shown > 0.2:
            self._shown = now
            rate = self.count / max(now - self.started, 1e-9)
            print(f"\r{self.label}: {self.count:,} events ({rate:,.0f}/s)", end="", file=sys.stderr)

    def done(self) -> None:
        if self.enabled:
            elapsed = time.monotonic() - self.started
            print(
                f"\r{self.label}: {self.count:,} events in {elapsed:.1f}s"
                f" ({self.count / max(elapsed, 1e-9):,.0f}/s)",
                file=sys.stderr,
            )


def read_payload(a: argparse.Namespace) -> bytes:
    """The append payload from --file, stdin ('-' or a pipe) or the argument."""
    if a.file:
        with open(a.file, "rb") as fh:
            return fh.read()
    if a.data == "-" or (a.data is None and not sys.stdin.isatty()):
        return sys.stdin.buffer.read()
    return str(a.data or "").encode()


async def cmd_append(c: Client, a: argparse.Namespace) -> None:
    data: bytes = a.payload
    metadata = dict(a.meta)
    content_type = a.content_type
    if content_type is None:
        try:
            json.loads(data)
            content_type = "application/json"
        except ValueError:
            content_type = ""
    event = new_event(a.type, data, metadata=metadata, id=a.id, content_type=content_type)
    r = await c.append(a.stream, [event], expected=a.expected)
    if a.json:
        print(json_format.MessageToJson(r, preserving_proto_field_name=True, indent=None))
    else:
        table(
            [(r.stream, r.first_revision, r.first_position, event.id, "yes" if r.duplicate else "no")],
            ("stream", "revision", "position", "event id", "duplicate"),
        )


async def cmd_read(c: Client, a: argparse.Namespace) -> None:
    progress = Progress("read", a.progress or (sys.stderr.isatty() and not a.json))
    rows: list[tuple[object, ...]] = []
    async for batch in c.read_batches(
        a.stream or "",
        start=parse_start(a.start),
        backwards=a.backwards,
        max_count=a.count,
        stream_prefixes=a.prefix,
        event_types=a.type,
        notifications_only=a.notifications,
    ):
        progress.add(len(batch))
        if a.json:
            sys.stdout.write("".join(json.dumps(event_json(ev)) + "\n" for ev in batch))
        else:
            rows.extend(_event_row(ev) for ev in batch)
    progress.done()
    if not a.json:
        table(rows, EVENT_HEADERS)


def _print_event(ev: pb.RecordedEvent, a: argparse.Namespace) -> bool:
    """Print one followed event; whether --count is reached."""
    if a.json:
        print(json.dumps(event_json(ev)), flush=True)
    else:
        print("  ".join(str(x) for x in _event_row(ev)), flush=True)
    a.count -= 1
    return bool(a.count == 0)


async def tail_gateway(a: argparse.Namespace) -> None:
    """``sluice tail --gateway``: the same output, through the gateway's fan-out."""
    start = None
    if a.start == "start":
        start = 1  # the first position: the gateway catches up from the store
    elif a.start and a.start != "end":
        if not a.start.startswith("pos:") or not a.start[4:].isdigit():
            sys.exit("sluice: through the gateway, --from takes start, end or pos:N")
        start = int(a.start[4:])
    async with GatewayClient(a.gateway) as g:
        async for item in g.watch(
            [a.stream] if a.stream else [],
            stream_prefixes=a.prefix or (),
            event_types=a.type or (),
            form="notification" if a.notifications else "full",
            start=start,
        ):
            if isinstance(item, pb.RecordedEvent):
                if _print_event(item, a):
                    return
            elif isinstance(item, pb.CaughtUp):
                print(f"-- caught up at position {item.position}; following --", file=sys.stderr, flush=True)
            elif isinstance(item, gwpb.Gap):
                reason = gwpb.Gap.Reason.Name(item.reason).removeprefix("REASON_").lower()
                print(
                    f"-- gap ({reason}): positions {item.from_position}..{item.to_position - 1} --",
                    file=sys.stderr,
                    flush=True,
                )
            elif isinstance(item, pb.EphemeralMessage):
                print(f"(ephemeral) {item.stream}  {item.type}  {item.data[:60]!r}", flush=True)


async def cmd_publish(a: argparse.Namespace) -> None:
    async with GatewayClient(a.gateway) as g:
        r = await g.publish(a.stream, a.type, a.payload, metadata=dict(a.meta), ttl=a.ttl)
    table([(r.id, r.subscribers, r.relayed)], ("id", "subscribers here", "relayed to gateways"))


async def cmd_tail(c: Client, a: argparse.Namespace) -> None:
    caught_up = False
    async for item in c.subscribe(
        a.stream or "",
        start=parse_start(a.start) or END,
        stream_prefixes=a.prefix,
        event_types=a.type,
        notifications_only=a.notifications,
    ):
        if isinstance(item, pb.RecordedEvent):
            if _print_event(item, a):
                return
        elif isinstance(item, pb.CaughtUp) and not caught_up:
            caught_up = True
            print(f"-- caught up at position {item.position}; following --", file=sys.stderr, flush=True)
        elif isinstance(item, pb.FellBehind):
            print(f"-- fell behind at {item.position}; catching up --", file=sys.stderr, flush=True)


def policy_text(p: pb.RetentionPolicy) -> str:
    """A retention policy as its rules, named as the ``streams retention`` flags that set
    them: ``max-count 1000, max-age 7d``; empty for no rule."""
    rules = []
    if p.max_count:
        rules.append(f"max-count {p.max_count}")
    if p.HasField("max_age") and p.max_age.ToTimedelta():
        rules.append(f"max-age {format_duration(p.max_age.ToTimedelta().total_seconds())}")
    if p.max_bytes:
        rules.append(f"max-bytes {p.max_bytes}")
    if p.truncate_before:
        rules.append(f"truncate-before {p.truncate_before}")
    if p.HasField("time_to_live") and p.time_to_live.ToTimedelta():
        rules.append(f"ttl {format_duration(p.time_to_live.ToTimedelta().total_seconds())}")
    return ", ".join(rules)


def _retention(i: pb.StreamInfo) -> str:
    """The policy in force and where it comes from: ``max-count 1000 (stream)``, ``none``."""
    rules = policy_text(i.effective_retention)
    return f"{rules} ({i.retention_source})" if rules else "none"


def _info_row(i: pb.StreamInfo) -> tuple[object, ...]:
    state = pb.StreamState.Name(i.state).removeprefix("STREAM_STATE_").lower()
    last = i.last_revision if i.has_events_written else "-"
    return (i.stream, state, i.event_count, i.first_revision, last, _retention(i))


INFO_HEADERS = ("stream", "state", "events", "first rev", "last rev", "retention")


def _print_infos(infos: Sequence[pb.StreamInfo], as_json: bool) -> None:
    if as_json:
        for i in infos:
            print(json_format.MessageToJson(i, preserving_proto_field_name=True, indent=None))
    else:
        table([_info_row(i) for i in infos], INFO_HEADERS)


async def cmd_streams(c: Client, a: argparse.Namespace) -> None:
    if a.action == "list":
        infos = [i async for i in c.list_streams(a.stream or "", include_deleted=a.deleted)]
        _print_infos(infos, a.json)
    elif a.action == "info":
        info = await c.stream_info(a.stream)
        if a.json:
            _print_infos([info], True)
            return
        table(
            [
                ("state", pb.StreamState.Name(info.state).removeprefix("STREAM_STATE_").lower()),
                ("events", info.event_count),
                ("first revision", info.first_revision),
                ("last revision", info.last_revision if info.has_events_written else "-"),
                ("last position", info.last_position),
                ("retention", _retention(info)),
            ],
            ("field", "value"),
        )
    elif a.action == "retention":
        info = await c.set_retention(
            a.stream,
            max_count=a.max_count,
            max_age=a.max_age,
            max_bytes=a.max_bytes,
            truncate_before=a.truncate_before,
            time_to_live=a.ttl,
        )
        _print_infos([info], a.json)
    elif a.action == "delete":
        if a.tombstone:
            pos = await c.tombstone_stream(a.stream, expected=a.expected)
        else:
            pos = await c.delete_stream(a.stream, expected=a.expected)
        what = "tombstoned" if a.tombstone else "deleted"
        print(
            json.dumps({"stream": a.stream, what: True, "position": pos}) if a.json else f"{what} {a.stream}"
        )


GROUP_HEADERS = ("group", "partitions", "members", "lag (events)", "oldest unhandled (s)")


async def cmd_groups(c: Client, a: argparse.Namespace) -> None:
    if a.action == "list":
        groups = await c.list_groups()
    elif a.action == "create":
        groups = [
            await c.create_group(
                a.group,
                stream_prefixes=a.prefix,
                event_types=a.type,
                start=parse_start(a.start) or END,
                partitions=a.partitions,
            )
        ]
    elif a.action == "update":
        if a.prefix is None and a.type is None:
            raise SystemExit("sluice: groups update needs --prefix or --type (--type '' for every type)")
        groups = [
            await c.update_group(
                a.group,
                stream_prefixes=None if a.prefix is None else [x for x in a.prefix if x],
                event_types=None if a.type is None else [x for x in a.type if x],
            )
        ]
    elif a.action == "reset":
        if not a.to:
            raise SystemExit("sluice: groups reset needs --to (start, end, pos:N, an ISO time or -5m)")
        groups = [await c.reset_group(a.group, parse_start(a.to), a.partition or ())]
    elif a.action == "redrive":
        done = await c.redrive(
            a.group, streams=a.stream or (), from_position=a.from_position, to_position=a.to_position
        )
        if a.json:
            print(json.dumps({"group": a.group, "redriven": done.redriven, "already": done.already}))
        else:
            table([(a.group, done.redriven, done.already)], ("group", "redriven", "redriven before"))
        return
    elif a.action == "delete":
        await c.delete_group(a.group)
        print(json.dumps({"group": a.group, "deleted": True}) if a.json else f"deleted group {a.group}")
        return
    else:
        groups = [await c.describe_group(a.group)]
    if a.json:
        for g in groups:
            print(json_format.MessageToJson(g, preserving_proto_field_name=True, indent=None))
        return
    if a.action == "list":
        table(
            [
                (
                    g.group,
                    g.config.partitions,
                    len(g.members),
                    sum(p.lag_events for p in g.partitions),
                    f"{max((p.lag_seconds for p in g.partitions), default=0):.1f}",
                )
                for g in groups
            ],
            GROUP_HEADERS,
        )
        return
    (g,) = groups
    table(
        [(m.member_id, m.member_epoch, ",".join(map(str, m.assigned)) or "-") for m in g.members],
        ("member", "epoch", "assigned partitions"),
    )
    print()
    table(
        [(p.partition, p.owner or "-", p.cursor, p.lag_events, f"{p.lag_seconds:.1f}") for p in g.partitions],
        ("partition", "owner", "cursor", "lag (events)", "lag (s)"),
    )
    dlq = g.config.dead_letter_stream or f"$dlq.{g.group}"
    try:
        held = (await c.stream_info(dlq)).event_count
    except StreamNotFound:
        held = 0
    except SluiceError:
        return  # not this caller's to read (security on)
    print(f"\ndead letters: {held} in {dlq}", end="")
    print(f" (sluice read '{dlq}'; sluice groups redrive {g.group})" if held else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice", description="Talk to a Sluice store.")
    p.add_argument(
        "--addr",
        default=os.environ.get("SLUICE_STORE_ADDR", "127.0.0.1:50051"),
        help="store address [SLUICE_STORE_ADDR; 127.0.0.1:50051]",
    )
    p.add_argument("--json", action="store_true", help="JSON Lines output for scripts")
    sub = p.add_subparsers(dest="command", required=True)

    ap = sub.add_parser("append", help="append one event")
    ap.add_argument("stream")
    ap.add_argument("type")
    ap.add_argument("data", nargs="?", help="payload; '-' or omitted with a pipe reads stdin")
    ap.add_argument("--file", help="read the payload from a file")
    ap.add_argument("--meta", action="append", default=[], type=key_value, metavar="KEY=VALUE")
    ap.add_argument("--id", help="event id (UUID); default: a new one")
    ap.add_argument("--content-type")
    ap.add_argument("--expected", type=parse_expected, default=ANY, help="any, no_stream, exists or N")
    ap.set_defaults(run=cmd_append)

    def reading(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("stream", nargs="?", help="one stream; omit for all streams")
        sp.add_argument("--from", dest="start", help="start, end, rev:N, pos:N, ISO time, -5m")
        sp.add_argument("--prefix", action="append", help="stream prefix filter (all streams)")
        sp.add_argument("--type", action="append", help="event type filter (all streams)")
        sp.add_argument("--notifications", action="store_true", help="leave out data")

    rp = sub.add_parser("read", help="read events")
    reading(rp)
    rp.add_argument("--backwards", action="store_true")
    rp.add_argument("--count", type=count, default=0, help="at most this many")
    rp.add_argument("--progress", action="store_true", help="show progress on stderr")
    rp.set_defaults(run=cmd_read)

    tp = sub.add_parser("tail", help="follow events as they are appended")
    reading(tp)
    tp.add_argument("--count", type=count, default=-1, help="stop after this many events")
    tp.add_argument(
        "--gateway",
        nargs="?",
        const=os.environ.get("SLUICE_GATEWAY_ADDR", DEFAULT_GATEWAY_ADDR),
        help="follow through the gateway at this address [SLUICE_GATEWAY_ADDR; 127.0.0.1:50052]",
    )
    tp.set_defaults(run=cmd_tail)

    pp = sub.add_parser("publish", help="send an ephemeral message to the gateway's subscribers")
    pp.add_argument("stream")
    pp.add_argument("type")
    pp.add_argument("data", nargs="?", help="payload; '-' or omitted with a pipe reads stdin")
    pp.add_argument("--file", help="read the payload from a file")
    pp.add_argument("--meta", action="append", default=[], type=key_value, metavar="KEY=VALUE")
    pp.add_argument("--ttl", type=float, default=0.0, help="seconds it may wait for a subscriber")
    pp.add_argument(
        "--gateway",
        default=os.environ.get("SLUICE_GATEWAY_ADDR", DEFAULT_GATEWAY_ADDR),
        help="gateway address [SLUICE_GATEWAY_ADDR; 127.0.0.1:50052]",
    )
    pp.set_defaults(run=None)

    sp = sub.add_parser("streams", help="list, describe, set retention, delete")
    sp.add_argument("action", choices=["list", "info", "retention", "delete"])
    sp.add_argument("stream", nargs="?", help="stream name (prefix for list)")
    sp.add_argument("--deleted", action="store_true", help="list: include deleted streams")
    sp.add_argument("--max-count", type=count, default=0)
    sp.add_argument("--max-age", type=duration, default=0.0, help="e.g. 7d")
    sp.add_argument("--max-bytes", type=count, default=0)
    sp.add_argument("--truncate-before", type=count, default=0)
    sp.add_argument("--ttl", type=duration, default=0.0, help="time to live, e.g. 30s")
    sp.add_argument("--tombstone", action="store_true", help="delete: for good")
    sp.add_argument("--expected", type=parse_expected, default=ANY)
    sp.set_defaults(run=cmd_streams)

    gp = sub.add_parser(
        "groups", help="consumer groups: list, describe, create, update, reset, redrive, delete"
    )
    gp.add_argument("action", choices=["list", "describe", "create", "update", "reset", "redrive", "delete"])
    gp.add_argument("group", nargs="?")
    gp.add_argument(
        "--prefix", action="append", help="create, update: stream prefix to read (update: replaces them)"
    )
    gp.add_argument("--type", action="append", help="create, update: event type to read ('' for every type)")
    gp.add_argument("--from", dest="start", help="create: where cursors start (default end)")
    gp.add_argument("--partitions", type=at_least_one, default=12, help="create: partition count")
    gp.add_argument("--to", help="reset: start, end, pos:N, an ISO time or -5m")
    gp.add_argument("--partition", type=int, action="append", help="reset: only this partition")
    gp.add_argument("--stream", action="append", help="redrive: only dead letters from this stream")
    gp.add_argument("--from-position", type=int, default=0, help="redrive: original positions from")
    gp.add_argument("--to-position", type=int, default=0, help="redrive: original positions up to")
    gp.set_defaults(run=cmd_groups)

    adm = sub.add_parser("admin", help="backup, restore, verify a store's SQLite file (where it runs)")
    adm.add_argument("action", choices=["backup", "restore", "verify"])
    adm.add_argument("--db", required=True, help="the store's file (sqlite:///path or a path)")
    adm.add_argument("--to", help="backup: the new backup file")
    adm.add_argument("--from", dest="source", help="restore: the backup file")
    return p


def cmd_admin(a: argparse.Namespace) -> None:
    """Backup, restore and verify run on the store's own file: they need the store package."""
    try:
        from sluice_store import admin
    except ImportError:
        raise SystemExit("sluice admin: needs the store package (pip install ./services/store)") from None
    try:
        if a.action == "verify":
            problems = admin.verify(a.db)
            if a.json:
                print(json.dumps({"db": a.db, "ok": not problems, "problems": problems}))
            else:
                table([(p,) for p in problems] or [("no problem found",)], (f"verify {a.db}",))
            if problems:
                raise SystemExit(1)
            return
        if a.action == "backup":
            if not a.to:
                raise SystemExit("sluice admin backup needs --to FILE")
            done = admin.backup(a.db, a.to)
        else:
            if not a.source:
                raise SystemExit("sluice admin restore needs --from FILE")
            done = admin.restore(a.source, a.db)
    except (OSError, ValueError) as e:
        raise SystemExit(f"sluice admin {a.action}: {e}") from None
    row = (done.path, done.head, done.events, done.streams, done.groups, done.bytes, done.store_id)
    if a.json:
        print(json.dumps(dict(zip(ADMIN_HEADERS, row, strict=True))))
    else:
        table([row], ADMIN_HEADERS)


ADMIN_HEADERS = ("file", "head position", "events", "streams", "groups", "bytes", "store id")


async def _run(a: argparse.Namespace) -> None:
    if a.command == "publish":
        await cmd_publish(a)
        return
    if a.command == "tail" and a.gateway:
        await tail_gateway(a)
        return
    async with Client(a.addr) as c:
        await a.run(c, a)


_AGO = re.compile(r"-\d+(\.\d+)?[a-z]+")


def _join_ago(argv: Sequence[str]) -> list[str]:
    """``--from -5m`` as ``--from=-5m``: argparse would take ``-5m`` for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--from", "--to") and _AGO.fullmatch(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    a = parser.parse_args(_join_ago(sys.argv[1:] if argv is None else argv))
    if a.command == "streams" and a.action != "list" and not a.stream:
        parser.error(f"streams {a.action} needs a stream name")
    if a.command == "groups" and a.action != "list" and not a.group:
        parser.error(f"groups {a.action} needs a group name")
    if a.command in ("append", "publish"):
        a.payload = read_payload(a)
    if a.command == "admin":
        cmd_admin(a)
        return
    try:
        asyncio.run(_run(a))
    except argparse.ArgumentTypeError as e:  # a start point, read when the command runs
        parser.error(str(e))
    except SluiceError as e:
        detail = f" {e.metadata}" if e.metadata else ""
        sys.exit(f"sluice: {e.code.name}: {e.message}{detail}")
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
