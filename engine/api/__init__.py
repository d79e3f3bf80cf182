"""The HTTP API (Litestar): app factory, controllers, auth, idempotency, problem responses.

Modules: ``app`` (``create_app``, ``create_app_from_settings``), ``auth``
(``Principal``, ``requires_scope`` guards, the key middleware), ``keys`` (API key
storage), ``idempotency``, ``problems`` (RFC 9457), ``pagination``, and one
module per domain controller (``health``, ``api_keys``, ``accounts``). Plugin
controllers use ``engine.api.auth.requires_scope`` and
``engine.api.problems.problem_responses`` like the engine's own.
"""
