"""A throw-away Python environment layered over this one, to pip-install a plugin in isolation.

``OverlayEnvironment(root).create()`` makes a pip-less virtual environment whose
``site`` also loads this interpreter's site-packages (the engine, pytest,
hypothesis ...), so ``pip install -e PLUGIN`` there is a real install that takes
seconds and leaves this environment untouched: other test runs sharing it never
see the plugin's entry point. ``run(...)`` executes in it with its ``bin`` first
on ``PATH`` (and this environment's ``bin`` after it, for ``nats-server``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

__all__ = ["OverlayEnvironment"]


def _can_build_editable_here() -> bool:
    """Whether setuptools can build an editable wheel with what is installed (no index)."""
    try:
        setuptools_version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major = int(setuptools_version.split(".")[0])
    return major >= 64 and importlib.util.find_spec("wheel") is not None


class OverlayEnvironment:
    """A virtual environment in ``root`` that sees this environment's packages too."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def python(self) -> Path:
        """The environment's interpreter."""
        return self.root / "bin" / "python"

    def create(self) -> Self:
        """Create the environment (no pip of its own: this environment's pip runs there)."""
        venv.EnvBuilder(with_pip=False, symlinks=True).create(self.root)
        own_site = subprocess.run(  # noqa: S603 - our own interpreter and a constant script
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        parents = dict.fromkeys(
            [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        )
        # addsitedir (not a bare path line) so the parent's own .pth files run too,
        # such as the editable install of the engine.
        lines = [f"import site; site.addsitedir({parent!r})" for parent in parents]
        (Path(own_site) / "_overlay_parent.pth").write_text(
            "\n".join(lines) + "\n", encoding="utf-8"
        )
        return self

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The process environment for commands run in this environment."""
        env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
        path = [str(self.root / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")]
        env["PATH"] = os.pathsep.join(part for part in path if part)
        env["VIRTUAL_ENV"] = str(self.root)
        env.update(extra or {})
        return env

    def run(
        self,
        args: Sequence[str | Path],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` (``"python"`` is this environment's interpreter); a failure is returned."""
        command = [str(self.python) if arg == "python" else str(arg) for arg in args]
        return subprocess.run(  # noqa: S603 - the caller's own command line
            command,
            cwd=cwd,
            env=self.environ(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pip(self, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run pip in this environment; raise ``RuntimeError`` with its output when it fails."""
        done = self.run(["python", "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd)
        if done.returncode != 0:
            raise RuntimeError(
                f"pip {' '.join(map(str, args))} failed:\n{done.stdout}{done.stderr}"
            )
        return done

    def install_editable(self, project: Path) -> None:
        """``pip install -e project`` (its dependencies must already be importable here).

        Builds without isolation when this environment can (setuptools >= 64 and
        ``wheel``), so no index is needed; otherwise pip fetches the build backend.
        """
        offline = ["--no-build-isolation"] if _can_build_editable_here() else []
        self.pip("install", "--no-deps", *offline, "-e", project)

    def uninstall(self, distribution: str) -> None:
        """``pip uninstall -y distribution``."""
        self.pip("uninstall", "-y", distribution)
