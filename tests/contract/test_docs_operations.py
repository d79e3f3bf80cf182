"""docs/operations.md names only settings that exist: every `[section] key` and every TOML block."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from engine.core.contributions import ConfigSection
from engine.core.plugins import installed_plugins
from engine.core.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
MENTION = re.compile(r"\[([a-z_]+(?:\.[a-z_]+)?)\] ([a-z_]+)")
TOML_BLOCK = re.compile(r"```toml\n(.*?)```", re.DOTALL)


def _fields(struct: type[Any]) -> set[str]:
    return {field.name for field in msgspec.structs.fields(struct)}


def known_settings() -> dict[str, set[str]]:
    """Every section's keys: the engine's and each installed plugin's ``[plugins.<name>]``."""
    known = {
        field.name: _fields(field.type)
        for field in msgspec.structs.fields(Settings)
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct)
    }
    known["plugins"] = {"enabled"}

    def register(section: ConfigSection) -> None:
        known[f"plugins.{section.plugin}"] = _fields(section.schema)

    for entry_point in installed_plugins().values():
        hook = getattr(entry_point.load(), "register_config_schema", None)
        if hook is not None:
            hook(register)
    return known


def _toml_keys(table: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    found = []
    for key, value in table.items():
        if isinstance(value, dict):
            found += _toml_keys(value, f"{prefix}{key}.")
        else:
            found.append((prefix.rstrip("."), key))
    return found


def test_every_setting_the_operations_guide_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    known = known_settings()
    named = set(MENTION.findall(text))
    for block in TOML_BLOCK.findall(text):
        named |= set(_toml_keys(tomllib.loads(block)))
    assert len(named) > 10  # the guide does name settings; the patterns still match them
    unknown = sorted(
        f"[{section}] {key}" for section, key in named if key not in known.get(section, set())
    )
    assert unknown == [], f"docs/operations.md names settings that do not exist: {unknown}"
