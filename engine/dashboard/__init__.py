"""Server-rendered dashboards: a connected account's earnings and the admin finance panel.

``engine.dashboard.routes.dashboard_app(state)`` is a Litestar app of its own,
mounted by the API app at ``/dashboard`` (``dashboard_mount``). Pages
authenticate with a signed session cookie made at sign-in (an API key pasted
once, or a one-time login link), never with the API key on every request;
every form carries a CSRF token. This package's ``tables`` module is imported
by the core's migrations, so it imports nothing heavy here.

Modules: ``security`` (sessions, CSRF, login links), ``context`` (per-request
page context), ``queries`` (what the pages read), ``charts`` (SVG layout),
``rendering`` (Jinja2 and headers), ``auth_pages``, ``account_pages``,
``admin_pages`` (the controllers), ``routes`` (the app and its mount).
"""
