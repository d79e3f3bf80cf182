"""The hook reference of ``docs/plugins.md``, generated from ``engine/core/hookspecs.py``.

The docstrings in ``hookspecs.py`` are the plugin author's documentation; this
renders them (signature, how results combine, arguments, return, example) as
Markdown between two marker lines of the guide, so the guide cannot drift:

    python -m engine.testing.hookdoc --check docs/plugins.md   # exit 1 when stale
    python -m engine.testing.hookdoc --write docs/plugins.md   # regenerate

``tests/contract/test_docs_plugins.py`` runs the check.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.core import hookspecs

__all__ = ["BEGIN", "END", "Hook", "hooks", "render", "render_signature", "replace_section"]

BEGIN = "<!-- BEGIN HOOK REFERENCE (generated: python -m engine.testing.hookdoc --write) -->"
END = "<!-- END HOOK REFERENCE -->"

_SECTIONS = ("Args:", "Returns:", "Raises:")
_INLINE_CODE = re.compile(r"``([^`]+)``")


class Hook:
    """One hookspec as documented: name, signature, how results combine, docstring."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.name: str = function.__name__
        options: dict[str, Any] = getattr(function, f"{hookspecs.PROJECT}_spec")
        self.firstresult = bool(options.get("firstresult"))

    @property
    def signature(self) -> str:
        """``resolve_price(order: Order, runtime: PluginRuntime) -> Money | None``."""
        return render_signature(self.function)

    @property
    def semantics(self) -> str:
        """How the engine combines the implementations' results."""
        if self.firstresult:
            return (
                "first result: the first implementation that returns something other than None wins"
            )
        if self.name.startswith("register_"):
            return "collects: call `register(...)` once per thing you add"
        return "broadcast: every implementation is called; failures are logged, never raised"

    @property
    def doc(self) -> str:
        """The docstring, cleaned."""
        return inspect.getdoc(self.function) or ""


def hooks() -> list[Hook]:
    """Every hookspec, in the order ``hookspecs.py`` declares them."""
    functions = [
        function
        for _, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, f"{hookspecs.PROJECT}_spec")
    ]
    functions.sort(key=lambda function: function.__code__.co_firstlineno)
    return [Hook(function) for function in functions]


def render_signature(function: Callable[..., Any]) -> str:
    """The signature as written in the source (annotations are strings there)."""
    signature = inspect.signature(function)
    parameters = ", ".join(
        f"{name}: {parameter.annotation}" if parameter.annotation is not parameter.empty else name
        for name, parameter in signature.parameters.items()
    )
    returns = signature.return_annotation
    suffix = "" if returns is signature.empty else f" -> {returns}"
    return f"{function.__name__}({parameters}){suffix}"


def _inline(text: str) -> str:
    return _INLINE_CODE.sub(r"`\1`", text)


def _literal_block(lines: list[str], start: int) -> tuple[list[str], int]:
    index = start
    block: list[str] = []
    while index < len(lines) and (not lines[index].strip() or lines[index].startswith("    ")):
        block.append(lines[index][4:])
        index += 1
    while block and not block[0].strip():
        block.pop(0)
    while block and not block[-1].strip():
        block.pop()
    # A plain fence: the docstring's example is shown as written; `ruff format`
    # (which formats Python fences in Markdown) would otherwise rewrite it here.
    return ["", "```", *block, "```", ""], index


def _section(lines: list[str], start: int, title: str) -> tuple[list[str], int]:
    index = start
    items: list[str] = []
    while index < len(lines) and lines[index].startswith("    "):
        text = lines[index][4:]
        if text.startswith(" ") and items:
            items[-1] += " " + text.strip()
        else:
            items.append(text.strip())
        index += 1
    out = [f"**{title}**", ""]
    if title == "Returns":
        out.append(_inline(" ".join(items)))
    else:
        for item in items:
            name, sep, rest = item.partition(":")
            out.append(f"- `{name}`:{_inline(rest)}" if sep else f"- {_inline(item)}")
    return [*out, ""], index


def _markdown(doc: str) -> list[str]:
    lines = doc.splitlines()
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.rstrip().endswith("::"):
            out.append(_inline(line.rstrip()[:-1]))
            block, index = _literal_block(lines, index + 1)
            out += block
            continue
        if line.strip() in _SECTIONS:
            section, index = _section(lines, index + 1, line.strip()[:-1])
            out += section
            continue
        out.append(_inline(line))
        index += 1
    squeezed: list[str] = []
    for line in out:
        if line.strip() or (squeezed and squeezed[-1].strip()):
            squeezed.append(line)
    while squeezed and not squeezed[-1].strip():
        squeezed.pop()
    return squeezed


def render() -> str:
    """The generated hook reference (without the marker lines)."""
    out: list[str] = []
    for hook in hooks():
        out += [
            f"### `{hook.name}`",
            "",
            "```python",
            hook.signature,
            "```",
            "",
            f"*{hook.semantics}.*",
            "",
            *_markdown(hook.doc),
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def replace_section(document: str, section: str) -> str:
    """``document`` with the text between the markers replaced by ``section``."""
    begin = document.index(BEGIN) + len(BEGIN)
    end = document.index(END)
    return f"{document[:begin]}\n\n{section}\n{document[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    """``--check FILE`` (exit 1 when the reference is stale) or ``--write FILE``."""
    parser = argparse.ArgumentParser(prog="python -m engine.testing.hookdoc")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", type=Path, metavar="FILE")
    action.add_argument("--write", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    path: Path = args.check or args.write
    document = path.read_text(encoding="utf-8")
    updated = replace_section(document, render())
    if args.write:
        path.write_text(updated, encoding="utf-8")
        return 0
    if updated != document:
        command = f"python -m engine.testing.hookdoc --write {path}"
        print(f"{path}: the hook reference is stale; run: {command}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
