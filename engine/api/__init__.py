"""The HTTP API (Litestar): app factory, controllers, auth, idempotency, problem responses.

Modules: ``app`` (``create_app``, ``create_app_from_settings``), ``auth``
(``Principal``, ``requires_scope`` guards, the key middleware), ``keys`` (API key
storage), ``idempotency``, ``problems`` (RFC 9457), ``pagination``, ``fields``
(the field types of request schemas, with their limits), ``strict`` (JSON bodies
decoded strictly, no NUL anywhere), and one module per domain controller
(``health``, ``api_keys``, ``accounts``). Plugin controllers use
``engine.api.auth.requires_scope``, ``engine.api.problems.problem_responses`` and
``engine.api.fields`` like the engine's own.
"""
