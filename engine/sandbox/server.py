"""`run_sandbox`: serve the sandbox with uvicorn (what `marketplace sandbox --port N` calls)."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from engine.sandbox.app import create_app


def run_sandbox(host: str, port: int, persist_path: Path | None = None) -> None:
    """Serve the sandbox on `host:port` until interrupted (blocking)."""
    app = create_app(persist_path=persist_path)
    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="on")
