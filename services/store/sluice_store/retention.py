"""Retention policies: what a stream keeps, which events are visible, and archive files."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote

from sluice.settings import parse_duration
from sluice.v1 import streams_pb2 as pb

US = 1_000_000
__all__ = ["US", "Policy", "parse_duration"]


@dataclasses.dataclass(frozen=True)
class Policy:
    """A retention policy. Zero means no limit; ages are in microseconds."""

    max_count: int = 0
    max_age_us: int = 0
    max_bytes: int = 0
    truncate_before: int = 0
    ttl_us: int = 0

    def __bool__(self) -> bool:
        return bool(
            self.max_count or self.max_age_us or self.max_bytes or self.truncate_before or self.ttl_us
        )

    @classmethod
    def parse(cls, spec: str) -> Policy:
        """``"max_count:1000,max_age:7d,max_bytes:1048576,truncate_before:10,ttl:30s"``."""
        fields: dict[str, int] = {}
        for item in filter(None, (i.strip() for i in spec.split(","))):
            key, sep, value = item.partition(":")
            if not sep:
                raise ValueError(f"expected KEY:VALUE, got {item!r}")
            if key in ("max_age", "ttl"):
                fields[key + "_us"] = int(parse_duration(value) * US)
            elif key in ("max_count", "max_bytes", "truncate_before"):
                fields[key] = int(value)
            else:
                raise ValueError(f"unknown retention key {key!r}")
        return cls(**fields)

    @classmethod
    def from_proto(cls, msg: pb.RetentionPolicy) -> Policy:
        return cls(
            max_count=msg.max_count,
            max_age_us=msg.max_age.seconds * US + msg.max_age.nanos // 1000,
            max_bytes=msg.max_bytes,
            truncate_before=msg.truncate_before,
            ttl_us=msg.time_to_live.seconds * US + msg.time_to_live.nanos // 1000,
        )

    def to_proto(self) -> pb.RetentionPolicy:
        msg = pb.RetentionPolicy(
            max_count=self.max_count, max_bytes=self.max_bytes, truncate_before=self.truncate_before
        )
        if self.max_age_us:
            msg.max_age.FromMicroseconds(self.max_age_us)
        if self.ttl_us:
            msg.time_to_live.FromMicroseconds(self.ttl_us)
        return msg

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if v})

    @classmethod
    def from_json(cls, text: str | None) -> Policy:
        return cls(**json.loads(text)) if text else NO_POLICY


NO_POLICY = Policy()  # shared: policies are immutable


def resolve(name: str, own: Policy, prefix_rules: Mapping[str, Policy]) -> tuple[Policy, str]:
    """The policy in force for a stream, and where it came from."""
    if own:
        return own, "stream"
    best = max((p for p in prefix_rules if name.startswith(p)), key=len, default=None)
    if best is None:
        return own, "none"  # own is empty here: share it
    return prefix_rules[best], f"prefix:{best}"


def floor_revision(policy: Policy, last_revision: int, deleted_before: int, bytes_floor: int) -> int:
    """The first revision still visible, from count, truncation, deletion and size limits."""
    floor = max(policy.truncate_before, deleted_before, bytes_floor)
    if policy.max_count:
        floor = max(floor, last_revision + 1 - policy.max_count)
    return max(floor, 0)


def age_limit_us(policy: Policy) -> int:
    """The shortest of max_age and time to live (microseconds); 0: no age limit."""
    return min((a for a in (policy.max_age_us, policy.ttl_us) if a), default=0)


def age_cutoff_us(policy: Policy, now_us: int) -> int:
    """Events created before this (microseconds since the epoch) are expired; 0: none."""
    limit = age_limit_us(policy)
    return now_us - limit if limit else 0


def now_us() -> int:
    return time.time_ns() // 1000


ARCHIVE_NAME_MAX = 120  # characters of a stream's folder name; longer names are hashed


def archive_name(stream: str) -> str:
    """A stream's folder name in the archive: reversible and collision-free.

    Letters, digits, "-", "_" and "." stand for themselves; every other character is
    percent-encoded as UTF-8 (``urllib.parse.unquote`` gives the name back), and so is a
    leading ".", so that no name is "." or ".." or hidden. A name whose encoding is longer
    than ARCHIVE_NAME_MAX keeps its first 80 characters, then "~" and 32 hex digits of its
    SHA-256 ("~" appears in no other folder name); its full name is in every record.
    """
    encoded = quote(stream, safe="-_.").replace("~", "%7E")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if len(encoded) <= ARCHIVE_NAME_MAX:
        return encoded
    head = encoded[:80]
    if "%" in head[-2:]:  # do not cut an escape in two
        head = head[: head.rindex("%")]
    return f"{head}~{hashlib.sha256(stream.encode()).hexdigest()[:32]}"


def archive_path(root: str, stream: str, first_revision: int, last_revision: int) -> str:
    """``<root>/<name>/<name>.r<first>-r<last>.jsonl.gz`` (name: archive_name), revisions
    zero-padded to sort; always inside root."""
    name = archive_name(stream)
    return os.path.join(root, name, f"{name}.r{first_revision:012d}-r{last_revision:012d}.jsonl.gz")


def write_archive(root: str, stream: str, events: Iterable[pb.RecordedEvent]) -> str | None:
    """Write events (one stream, ascending revisions) as gzip JSON Lines; fsync; return the path."""
    lines = []
    first = last = -1
    for ev in events:
        if first < 0:
            first = ev.revision
        last = ev.revision
        record: dict[str, object] = {
            "id": ev.id,
            "stream": ev.stream,
            "revision": ev.revision,
            "position": ev.position,
            "type": ev.type,
            "created": datetime.fromtimestamp(ev.created.ToMicroseconds() / US, UTC).isoformat(),
            "metadata": dict(ev.metadata),
            "content_type": ev.content_type,
        }
        try:
            record["data"] = ev.data.decode("utf-8")
        except UnicodeDecodeError:
            record["data_base64"] = base64.b64encode(ev.data).decode("ascii")
        lines.append(json.dumps(record, separators=(",", ":")))
    if first < 0:
        return None
    path = archive_path(root, stream, first, last)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb") as gz:
            gz.write(("\n".join(lines) + "\n").encode())
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    return path
