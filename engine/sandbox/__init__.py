"""Offline, stateful Stripe Connect emulator that the official `stripe` SDK talks to unchanged.

Public names: `create_app`, `SandboxState`, `SandboxOptions`, `TickCallback`,
`run_sandbox`; test helper `engine.sandbox.testing.running_sandbox`.
"""

from engine.sandbox.app import SandboxApp, create_app
from engine.sandbox.server import run_sandbox
from engine.sandbox.state import SandboxOptions, SandboxState, TickCallback

__all__ = [
    "SandboxApp",
    "SandboxOptions",
    "SandboxState",
    "TickCallback",
    "create_app",
    "run_sandbox",
]
