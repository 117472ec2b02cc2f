"""The rules for names, one copy for every process: the store, the gateway, the sidecar.

- A stream name or event type is 1 to N characters (N is the store's ``max_stream_name``
  for streams, 256 for types) with no control character: C0 (U+0000-U+001F), DEL and C1
  (U+0080-U+009F).
- Stream names starting with ``$`` belong to the store (dead letters live under
  ``$dlq.``). Nothing writes them through Append, Broadcast or Publish; reads and filters
  may name them.
- Event ids are UUIDs, in any of the forms Python's ``uuid.UUID`` reads; stored and
  answered in their canonical form.
- An event's (or ephemeral message's) content type is at most 256 characters and its
  metadata keys are not empty; neither holds a control character (both become HTTP
  headers or CloudEvents attributes on the way to a consumer). Metadata values are free.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

SYSTEM_PREFIX = "$"
MAX_TYPE = 256
#: The longest group member id (a Kubernetes pod name, the sidecar's default, is at most 253).
MAX_MEMBER_ID = 256
#: The most names one list of a filter may hold (stream prefixes, event types, streams):
#: each is matched against every event the filter sees.
MAX_FILTER_ENTRIES = 1000
#: The longest content type (a media type with its parameters).
MAX_CONTENT_TYPE = 256

has_control = re.compile("[\x00-\x1f\x7f-\x9f]").search


def name_problem(name: str, max_len: int, what: str = "stream name") -> str:
    """Why ``name`` is not a valid name of at most ``max_len`` characters ("" if it is)."""
    if not name:
        return f"{what} is empty"
    if len(name) > max_len:
        return f"{what} is {len(name)} characters; at most {max_len}"
    if has_control(name):
        return f"{what} contains a control character"
    return ""


def is_system(name: str) -> bool:
    """Whether the store reserves the stream name for itself."""
    return name.startswith(SYSTEM_PREFIX)


def parse_uuid(text: str) -> tuple[bytes, str]:
    """Bytes and canonical text of an event id; raises ValueError."""
    if len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-":
        raw = bytes.fromhex(text.replace("-", ""))  # ValueError on anything but hex
        if len(raw) == 16:
            return raw, text.lower()
    eid = uuid.UUID(text)  # braces, urn:uuid:, no dashes
    return eid.bytes, str(eid)


def event_fields_problem(content_type: str, metadata: Mapping[str, str]) -> tuple[str, str]:
    """(field, why) when an event's content type or a metadata key breaks the rules above,
    ``("", "")`` when both keep them. ``field`` is ``content_type`` or ``metadata``."""
    if content_type and (len(content_type) > MAX_CONTENT_TYPE or has_control(content_type)):
        rule = f"at most {MAX_CONTENT_TYPE} characters without control characters"
        return "content_type", f"content_type must be {rule}"
    for key in metadata:
        if not key:
            return "metadata", "metadata has an empty key"
        if has_control(key):
            return "metadata", f"metadata key {key[:64]!r} contains a control character"
    return "", ""
