"""Server-rendered dashboards: a connected account's earnings and the admin finance panel.

``engine.dashboard.routes.dashboard_router()`` is mounted by the API app under
``/dashboard``. Pages authenticate with a signed session cookie made at sign-in
(an API key pasted once, or a one-time login link), never with the API key on
every request; every form carries a CSRF token. This package's ``tables``
module is imported by the core's migrations, so it imports nothing heavy here.
"""
