"""Settings for Sluice processes: each option is a flag and a ``SLUICE_*`` variable, typed once."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(text: str) -> float:
    """``"30s"``, ``"5m"``, ``"7d"``, ``"250ms"`` or plain seconds -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"expected a duration like 30s, 5m, 7d, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """Seconds in the largest unit that holds them whole (``604800`` -> ``"7d"``, ``0.25``
    -> ``"250ms"``): what parse_duration reads back."""
    for unit in ("d", "h", "m", "s", "ms"):
        count = seconds / _UNITS[unit]
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def parse_listen_addr(text: str) -> str:
    """A listen address, ``host:port`` (``[::1]:port`` for IPv6; port 0: any free port),
    or empty where the listener may be off. A port past 65535 is refused: gRPC would take
    it modulo 65536 and listen somewhere else."""
    text = text.strip()
    if not text:
        return ""
    _, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port with a port from 0 to 65535, got {text[:100]!r}")
    return text


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


def redact(url: str) -> str:
    """A URL fit for a log line: any password (user:password@ or ?password=) as ***."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            user, _, host = netloc.rpartition("@")
            if ":" in user:
                netloc = f"{user.split(':', 1)[0]}:***@{host}"
        secret = ("password", "sslpassword")
        pairs = [(k, "***" if k.lower() in secret else v) for k, v in parse_qsl(parts.query)]
        if netloc == parts.netloc and all(v != "***" for _, v in pairs):
            return url  # nothing to hide (and sqlite:///path keeps its three slashes)
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(pairs, safe="*")))
    except ValueError:
        return "<a URL that cannot be shown>"


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting: its flag, environment variable, parser and help. Its default is the
    settings dataclass's field of the same name (written once, there)."""

    name: str
    parse: Callable[[str], Any]
    help: str
    env_name: str = ""

    @property
    def env(self) -> str:
        return self.env_name or "SLUICE_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def default(cls: Any, name: str) -> Any:
    """The default of a settings dataclass's field."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def load(
    cls: Callable[..., T],
    options: Sequence[Option],
    prog: str,
    description: str,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """Settings from flags, then environment variables, then defaults; bad values name themselves.

    ``cls`` validates in its constructor by raising ConfigError("<field>: <problem>"); the
    message is rewritten to name the flag or variable the value came from.
    """
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for opt in options:
        shown = default(cls, opt.name)
        parser.add_argument(opt.flag, dest=opt.name, default=None, help=f"{opt.help} [{opt.env}; {shown!r}]")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in options:
        raw = getattr(args, opt.name)
        source = opt.flag
        if raw is None and opt.env in env:
            raw, source = env[opt.env], opt.env
        if raw is None:
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from e
        sources[opt.name] = source
    try:
        return cls(**values)
    except ConfigError as e:
        name, _, rest = str(e).partition(":")
        raise ConfigError(f"{sources.get(name, name)}:{rest}") from e


#: Every process's own settings.
PROCESS_OPTIONS: tuple[Option, ...] = (
    Option("log_format", str, "text, or json: one object a line (time, level, logger, message, trace)"),
)


@dataclasses.dataclass(frozen=True)
class ProcessSettings:
    log_format: str = "text"

    def check_process(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format: expected text or json, got {self.log_format!r}")
