"""The ``marketplace new-plugin NAME [--dir PATH]`` sub-command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_new_plugin_command"]

_NEXT_STEPS = """\
Created plugin {name} in {target}. Next:

  cd {target}
  pip install -e '.[test]'
  pytest

Then read docs/plugins.md (hooks, public API, testing kit, conformance check).
Enable it in the engine's config: [plugins] enabled = [..., "{name}"]."""


def add_new_plugin_command(sub: Any) -> None:
    """Add ``new-plugin`` to the ``marketplace`` sub-parsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "new-plugin",
        help="scaffold an installable plugin package",
        description="Create a plugin package (hooks, config, tables, a controller, tests) "
        "that installs with pip and passes its own tests.",
    )
    parser.add_argument("name", help="the plugin's name, e.g. demo_model")
    parser.add_argument("--dir", help="directory to create (default: ./NAME)")
    parser.set_defaults(func=run_new_plugin)


def run_new_plugin(args: argparse.Namespace, settings: Any, plugins: Any) -> int:
    """Scaffold the plugin and print what to do next."""
    from engine.scaffold.generator import scaffold

    target = Path(args.dir) if args.dir else Path.cwd() / args.name
    scaffold(args.name, target)
    print(_NEXT_STEPS.format(name=args.name, target=target))
    return 0
