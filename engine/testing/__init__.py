"""The plugin testing kit: what a plugin's own test suite uses to test against the engine.

Import from the submodules (each is cheap to import on its own):

- ``engine.testing.stack``: ``running_stack(...)`` starts the sandbox, a migrated
  database, the API over HTTP and a worker; ``Stack`` is the handle on it.
- ``engine.testing.events``: Stripe-shaped events and their signatures.
- ``engine.testing.ledger``: ledger assertions (balances, every transaction balances).
- ``engine.testing.conformance``: the conformance check every plugin can run.
- ``engine.testing.strategies``: hypothesis strategies for money and orders.
- ``engine.testing.infra``: PostgreSQL and NATS for a test run, fresh databases.
- ``engine.testing.environments``: a throw-away environment to ``pip install -e`` a plugin in.
- ``engine.testing.hookdoc``: the hook reference of ``docs/plugins.md``, from the hookspecs.
- ``engine.testing.command``: ``marketplace conformance NAME``.
- ``engine.testing.pytest_plugin``: the ``mp_*`` fixtures (registered with pytest
  through the ``pytest11`` entry point, so installing the engine is enough).

See ``docs/plugins.md`` ("Testing a plugin").
"""
