"""Command-line options as Config fields.

Each option sets the Config field of its name and reads a ``TUSSERVER_<NAME>``
environment variable. It has no default of its own: an option not given
leaves its field at the Config default, which its help shows, derived from
the dataclass. ``config_from`` turns the parsed options into a Config.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import click
from click.types import OptionHelpExtra

from tusserver import content_types
from tusserver.config import (
    Config,
    format_duration,
    parse_duration,
    parse_mode,
    parse_size,
)

FC = TypeVar("FC", bound=Callable[..., Any])


def _split_origins(values: tuple[str, ...], setting: str) -> tuple[str, ...]:
    """Flags give one origin each; the environment variable a list, which
    click splits at spaces only, so commas are split here."""
    return tuple(origin for value in values for origin in re.split(r"[\s,]+", value) if origin)


def _split_events(text: str, setting: str) -> tuple[str, ...]:
    """``"pre-create, post-finish"`` -> ("pre-create", "post-finish")."""
    return tuple(event for event in re.split(r"[\s,]+", text) if event)


class _Kind(NamedTuple):
    """How an option's text becomes its field's value, and the field's default back."""

    parse: Callable[[Any, str], Any]
    show: Callable[[Any], str]


_DURATION = _Kind(parse_duration, format_duration)
# Fields whose option is text (or a list) of another shape than the field.
_KINDS: dict[str, _Kind] = {
    "max_size": _Kind(parse_size, str),
    "min_size": _Kind(parse_size, str),
    "allow_types": _Kind(content_types.split_patterns, ",".join),
    "idle_timeout": _DURATION,
    "lock_wait": _DURATION,
    "takeover_after": _DURATION,
    "lock_ttl": _DURATION,
    "shutdown_grace": _DURATION,
    "file_mode": _Kind(parse_mode, lambda mode: f"{mode:o}"),
    "expire_after": _DURATION,
    "retention": _DURATION,
    "sweep_interval": _DURATION,
    "cors_origins": _Kind(_split_origins, " ".join),
    "checkpoint_bytes": _Kind(parse_size, str),
    "checkpoint_interval": _DURATION,
    "hooks_events": _Kind(_split_events, ",".join),
    "hooks_timeout": _DURATION,
    "progress_interval": _DURATION,
    "hooks_reclaim_after": _DURATION,
}
_FIELDS = {field.name: field for field in dataclasses.fields(Config)}


def config_from(options: Mapping[str, Any]) -> Config:
    """The Config the parsed options describe. An option not given (None, or
    no value of a repeatable one) leaves its field at the default; text is
    parsed into sizes, durations and modes. Raises ConfigError."""
    fields: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or value == ():
            continue
        kind = _KINDS.get(name)
        fields[name] = value if kind is None else kind.parse(value, name.replace("_", " "))
    return Config(**fields)


def _show(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, Path) and not default.is_absolute():
        return f"./{default}"  # as people write a folder under the working directory
    return str(default)


class Setting(click.Option):
    """An option for one Config field: no default of its own, the field's in its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, default=None, **kwargs)
        assert self.name is not None
        default = _FIELDS[self.name].default
        kind = _KINDS.get(self.name)
        self.shown_default = (
            None if default in (None, ()) else (kind.show if kind else _show)(default)
        )

    def get_help_extra(self, ctx: click.Context) -> OptionHelpExtra:
        extra = super().get_help_extra(ctx)
        if self.shown_default is not None:
            extra["default"] = self.shown_default
        return extra


def option(*declarations: str, **kwargs: Any) -> Callable[[FC], FC]:
    """``--max-size`` for the field max_size, with TUSSERVER_MAX_SIZE; a second
    declaration names the field when it differs from the flag."""
    flag = declarations[0].split("/")[0]  # "--access-log/--no-access-log" -> "--access-log"
    envvar = "TUSSERVER_" + flag.lstrip("-").replace("-", "_").upper()
    return click.option(*declarations, cls=Setting, envvar=envvar, show_envvar=True, **kwargs)
