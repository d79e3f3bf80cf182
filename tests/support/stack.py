"""The whole stack for end-to-end tests (kept importable here; it lives in the testing kit).

``running_stack(...)`` and ``Stack`` are ``engine.testing.stack``'s, shipped with
the engine so plugin authors test against the same stack; see that module.
"""

from __future__ import annotations

from engine.testing.stack import SHIPPED, Stack, merge_config, running_stack

__all__ = ["SHIPPED", "Stack", "merge_config", "running_stack"]
