"""course_sales: paid courses with an instructor/affiliate revenue share (a marketplace plugin).

Written only against the engine's public API (``docs/plugins.md``); the engine
finds it through the ``marketplace.plugins`` entry point ``course_sales``.
"""
