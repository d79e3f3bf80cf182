"""Render the plugin templates into a new, installable plugin package.

Templates live in ``templates/plugin/`` as ``*.tmpl`` files (so no tool takes
them for code); the directory ``package`` becomes the plugin's package. Tokens
``{{name}}`` (``demo_model``), ``{{title}}`` (``DemoModel``), ``{{dist}}``
(``marketplace-demo-model``) and ``{{url_name}}`` (``demo-model``) are replaced.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from engine.core.errors import InvalidInput
from engine.core.plugins import installed_plugins

__all__ = ["PluginNames", "check_name", "render", "scaffold"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
_TOKEN = re.compile(r"\{\{[a-z_]+\}\}")
_PACKAGE_DIR = "package"
_SUFFIX = ".tmpl"


@dataclass(frozen=True, slots=True)
class PluginNames:
    """The spellings of one plugin name the templates use."""

    name: str

    @property
    def title(self) -> str:
        """``DemoModel`` (class names)."""
        return "".join(part.capitalize() for part in self.name.split("_") if part)

    @property
    def dist(self) -> str:
        """``marketplace-demo-model`` (the distribution name pip installs)."""
        return f"marketplace-{self.name.replace('_', '-')}"

    @property
    def url_name(self) -> str:
        """``demo-model`` (readable in prose; the routes use ``/v1/<name>``)."""
        return self.name.replace("_", "-")

    def tokens(self) -> dict[str, str]:
        """Token -> replacement."""
        return {
            "{{name}}": self.name,
            "{{title}}": self.title,
            "{{dist}}": self.dist,
            "{{url_name}}": self.url_name,
        }


def check_name(name: str) -> PluginNames:
    """Validate a new plugin's name (it is the package, entry point, config section, table prefix).

    Raises:
        InvalidInput: not a lowercase identifier, a keyword, an importable
            module, or an installed plugin's name.
    """
    if not _NAME.fullmatch(name) or name.endswith("_") or "__" in name:
        raise InvalidInput(
            f"{name!r} is not a plugin name: use 2-40 lowercase letters, digits and single "
            "underscores, starting with a letter (e.g. demo_model)",
            field="name",
        )
    if keyword.iskeyword(name):
        raise InvalidInput(f"{name!r} is a Python keyword", field="name")
    if name in installed_plugins():
        raise InvalidInput(f"a plugin called {name!r} is already installed", field="name")
    if importlib.util.find_spec(name) is not None:
        raise InvalidInput(f"a module called {name!r} is already importable", field="name")
    return PluginNames(name)


def render(text: str, names: PluginNames) -> str:
    """Replace the tokens in one template; refuse unknown tokens."""
    for token, value in names.tokens().items():
        text = text.replace(token, value)
    leftover = _TOKEN.search(text)
    if leftover:
        raise ValueError(f"unknown template token {leftover.group()}")
    return text


def _templates() -> Traversable:
    return resources.files("engine.scaffold").joinpath("templates", "plugin")


def _walk(directory: Traversable, relative: Path) -> list[tuple[Path, Traversable]]:
    found: list[tuple[Path, Traversable]] = []
    for entry in sorted(directory.iterdir(), key=lambda item: item.name):
        if entry.is_dir():
            found += _walk(entry, relative / entry.name)
        elif entry.name.endswith(_SUFFIX):
            found.append((relative / entry.name.removesuffix(_SUFFIX), entry))
    return found


def _target_path(relative: Path, names: PluginNames) -> Path:
    parts = [names.name if part == _PACKAGE_DIR else part for part in relative.parts]
    return Path(*parts).with_name(render(parts[-1], names))


def scaffold(name: str, target: Path) -> list[Path]:
    """Create plugin ``name``'s project in ``target`` (new or empty); return the files written.

    Raises:
        InvalidInput: a bad name, or ``target`` exists and is not empty.
    """
    names = check_name(name)
    if target.exists() and any(target.iterdir()):
        raise InvalidInput(f"{target} already exists and is not empty", field="dir")
    written: list[Path] = []
    for relative, template in _walk(_templates(), Path()):
        path = target / _target_path(relative, names)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(template.read_text(encoding="utf-8"), names), encoding="utf-8")
        written.append(path)
    return written
