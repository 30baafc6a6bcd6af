"""``tusserver``'s flags have no defaults of their own: an option not given
leaves its Config field at the Config default, and the help shows that."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.test_cli import help_entries
from tusserver.cli import main
from tusserver.config import Config, parse_duration

FIELDS = {field.name: field for field in dataclasses.fields(Config)}
DEFAULTS = Config()


def field_of(flag: str) -> str:
    name = flag[2:].replace("-", "_")
    return name if name in FIELDS else name + "s"  # --cors-origin: cors_origins


def value_shown(field: str, text: str, default: Any) -> Any:
    """The help's default text read back as a value of the default's type."""
    if field == "file_mode":
        return int(text, 8)
    if isinstance(default, bool):
        return {"on": True, "off": False}[text]
    if isinstance(default, Path):
        return Path(text)
    if FIELDS[field].type.startswith("float"):  # durations, in seconds
        return parse_duration(text, field)
    if isinstance(default, int):
        return int(text)
    return text


@pytest.mark.parametrize("command", ["serve", "sweep"])
def test_every_default_the_help_shows_is_the_config_default(command: str) -> None:
    # Wide enough that no entry wraps inside a default.
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=1000)
    assert result.exit_code == 0, result.output
    entries = help_entries(result.output)

    shown = {}
    for flag, entry in entries.items():
        if flag == "--help" or flag.startswith("--no-"):
            continue
        field = field_of(flag)
        assert field in FIELDS, f"{flag} sets no Config field"
        if "default: " in entry:
            shown[field] = entry.split("default: ")[1].split(";")[0].split("]")[0].strip()
        else:
            # Shown as "Unset: ..." in the help text itself.
            assert FIELDS[field].default in (None, ()), f"{flag} hides its default"

    assert {"storage", "data_dir", "expire_after"} <= set(shown)
    for field, text in shown.items():
        default = getattr(DEFAULTS, field)
        assert value_shown(field, text, default) == default, f"{field}: help says {text!r}"
