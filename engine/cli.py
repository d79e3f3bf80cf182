"""The ``marketplace`` command: run the stack, serve, migrate, reconcile, plugins, the sandbox.

Every command loads settings first (``--config FILE`` or ``MARKETPLACE_CONFIG``,
then environment overrides); a bad config stops it with the key named and exit
code 2. Enabled plugins may add sub-commands through ``register_cli_commands``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine.core.errors import ConfigError, MarketplaceError
from engine.core.plugins import Plugins, build_plugins, installed_plugins
from engine.core.settings import Settings, load_settings
from engine.observability import configure_logging

__all__ = ["main"]

log = logging.getLogger("marketplace")

EXIT_CONFIG = 2


def _settings(args: argparse.Namespace) -> Settings:
    path = Path(args.config) if getattr(args, "config", None) else None
    return load_settings(path)


def _replace(settings: Settings, section: str, **changes: Any) -> Settings:
    current = getattr(settings, section)
    return msgspec.structs.replace(
        settings, **{section: msgspec.structs.replace(current, **changes)}
    )


# ---------------------------------------------------------------- plugins


def cmd_plugins(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """List installed plugins, whether each is enabled, and the hooks it implements."""
    from engine.core.plugins import describe_hooks

    installed = installed_plugins()
    width = max((len(name) for name in installed), default=10)
    for info in plugins.infos:
        hooks = info.hooks
        if not info.enabled and info.name in installed:
            hooks = describe_hooks(installed[info.name].load())
        state = "essential" if info.essential else ("enabled" if info.enabled else "disabled")
        print(f"{info.name:<{width}}  {state:<9}  {info.target}")
        print(f"{'':<{width}}  hooks: {', '.join(hooks) or '-'}")
    return 0


# ---------------------------------------------------------------- migrate


def cmd_migrate(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Apply the engine's and every enabled plugin's migrations."""
    from engine.core.db import migrate

    if not settings.database.url:
        raise ConfigError("database.url", "is empty; set it or MARKETPLACE_DATABASE_URL")
    ran = asyncio.run(migrate(settings.database.url, plugins.table_apps()))
    print("\n".join(ran) if ran else "nothing to migrate")
    return 0


# ---------------------------------------------------------------- serve


def _quiet_server_class() -> type[Any]:
    import uvicorn

    class QuietServer(uvicorn.Server):
        """A uvicorn server that leaves signals to the CLI (which runs several servers)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

    return QuietServer


def _quiet_server(config: Any) -> Any:
    return _quiet_server_class()(config)


async def _serve_api(settings: Settings, plugins: Plugins, stop: asyncio.Event) -> None:
    import uvicorn

    from engine.api.app import create_app
    from engine.services import Services

    services = await Services.start(settings, plugins=plugins)
    try:
        app = create_app(services)
        config = uvicorn.Config(
            app,
            host=settings.api.host,
            port=settings.api.port,
            log_level="warning",
            lifespan="on",
        )
        server = _quiet_server(config)
        task = asyncio.create_task(server.serve())
        await stop.wait()
        server.should_exit = True
        await task
    finally:
        await services.close()


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def cmd_serve(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Run the API server only (production: many of these behind a load balancer)."""
    if args.port:
        settings = _replace(settings, "api", port=args.port)

    async def run() -> None:
        await _serve_api(settings, plugins, _stop_event())

    asyncio.run(run())
    return 0


# ---------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Run one webhook worker (run as many as you like, on any machines)."""
    from engine.worker.runtime import run_worker

    if not settings.nats.url:
        raise ConfigError("nats.url", "is empty; set it or MARKETPLACE_NATS_URL")

    async def run() -> None:
        await run_worker(settings, plugins=plugins, stop=_stop_event())

    asyncio.run(run())
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Replay dead-lettered webhook events (one event, or every one of an account)."""
    from engine.services import Services
    from engine.worker.runtime import Scheduler, make_broker, make_mailbox

    if not args.event and not args.account:
        raise ConfigError("replay", "give --event EVENT_ID or --account ACCOUNT")

    async def run() -> list[str]:
        services = await Services.start(settings, plugins=plugins, connect_nats=False)
        broker = make_broker(settings)
        await broker.startup()
        try:
            accounts = await make_mailbox(services).replay(
                event_ids=args.event or (), account=args.account
            )
            scheduler = Scheduler(broker)
            for account in accounts:
                await scheduler.requeue(account)
            return accounts
        finally:
            await broker.shutdown()
            await services.close()

    accounts = asyncio.run(run())
    print(f"replaying {', '.join(accounts)}" if accounts else "nothing to replay")
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Match Stripe's balance transactions with the ledger; exit 3 when something differs."""
    from engine.reconciliation.cli import run

    if not settings.database.url:
        raise ConfigError("database.url", "is empty; set it or MARKETPLACE_DATABASE_URL")
    return run(args, settings, plugins)


def cmd_setup_webhooks(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Register the engine's two endpoints with Stripe and print the secrets to store."""
    from engine.gateway import StripeGateway
    from engine.webhooks.setup import register_webhook_endpoints

    gateway = StripeGateway(settings.stripe.secret_key, settings.stripe.api_base)
    secrets_ = asyncio.run(register_webhook_endpoints(gateway, args.url))
    print("Store these in your config (or environment):")
    print(f'  [stripe] webhook_secrets = ["{secrets_.platform}"]')
    print(f'  [stripe] connect_webhook_secrets = ["{secrets_.connect}"]')
    print(f"  MARKETPLACE_STRIPE_WEBHOOK_SECRETS={secrets_.platform}")
    print(f"  MARKETPLACE_STRIPE_CONNECT_WEBHOOK_SECRETS={secrets_.connect}")
    return 0


# ---------------------------------------------------------------- sandbox


def cmd_sandbox(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Run the offline Stripe sandbox on its own."""
    from engine.sandbox import run_sandbox

    persist = Path(args.state) if args.state else None
    run_sandbox(args.host, args.port, persist)
    return 0


# ---------------------------------------------------------------- up


class _Stack:
    """The processes and servers ``marketplace up`` started, stopped in reverse."""

    def __init__(self) -> None:
        self._stops: list[Any] = []

    def started(self, stopper: Any) -> None:
        self._stops.append(stopper)

    def stop(self) -> None:
        while self._stops:
            stopper = self._stops.pop()
            with contextlib.suppress(Exception):
                stopper()


def _admin_key(data_dir: Path) -> str:
    """The local admin key for ``up``: made once, kept under the data dir."""
    path = data_dir / "admin_api_key"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    key = f"mk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    path.write_text(key + "\n", encoding="utf-8")
    path.chmod(0o600)
    return key


def cmd_up(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Run everything on this machine with embedded defaults and print the URLs."""
    from engine.infra.embedded import EmbeddedNats, EmbeddedPostgres
    from engine.infra.processes import find_free_port

    data_dir = settings.data_path
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = _Stack()
    try:
        if not settings.database.url:
            postgres = EmbeddedPostgres(data_dir / "postgres")
            url = postgres.start()
            stack.started(postgres.stop)
            settings = _replace(settings, "database", url=url)
            print(f"postgres   {url}  (log: {postgres.log_path})")
        if not settings.nats.url:
            nats_server = EmbeddedNats(data_dir / "nats")
            url = nats_server.start()
            stack.started(nats_server.stop)
            settings = _replace(settings, "nats", url=url)
            print(f"nats       {url}")
        from engine.core.db import migrate

        asyncio.run(migrate(settings.database.url, plugins.table_apps()))
        admin_key = settings.api.bootstrap_admin_key or _admin_key(data_dir)
        settings = _replace(settings, "api", bootstrap_admin_key=admin_key)
        port = args.port or settings.api.port
        from engine.infra.processes import port_accepts

        if port_accepts(settings.api.host, port):
            port = find_free_port(settings.api.host)
        settings = _replace(settings, "api", port=port)
        base = f"http://{settings.api.host}:{port}"
        if not settings.engine.public_url:
            settings = _replace(settings, "engine", public_url=base)
        asyncio.run(_up(settings, plugins, data_dir, admin_key, base))
    finally:
        stack.stop()
    return 0


async def _up(
    settings: Settings, plugins: Plugins, data_dir: Path, admin_key: str, base: str
) -> None:
    import uvicorn

    stop = _stop_event()
    tasks: list[asyncio.Task[None]] = []
    servers: list[Any] = []
    if not settings.stripe.api_base:
        from engine.infra.processes import find_free_port
        from engine.sandbox import create_app as create_sandbox

        sandbox_port = find_free_port()
        sandbox = _quiet_server(
            uvicorn.Config(
                create_sandbox(persist_path=data_dir / "sandbox.state"),
                host="127.0.0.1",
                port=sandbox_port,
                log_level="warning",
            )
        )
        servers.append(sandbox)
        tasks.append(asyncio.create_task(sandbox.serve()))
        settings = _replace(settings, "stripe", api_base=f"http://127.0.0.1:{sandbox_port}")
        print(f"sandbox    {settings.stripe.api_base}  (offline Stripe)")
    if not settings.stripe.webhook_secrets or not settings.stripe.connect_webhook_secrets:
        settings = await _register_webhooks(settings, base)
    from engine.worker.runtime import run_worker

    worker = asyncio.create_task(run_worker(settings, plugins=plugins, stop=stop))
    api = asyncio.create_task(_serve_api(settings, plugins, stop))
    await _wait_healthy(base, api)
    print(f"api        {base}")
    print(f"docs       {base}/schema/swagger")
    print(f"health     {base}/health")
    print(f"dashboard  {base}/dashboard  (sign in with the admin key below)")
    print(f"admin key  {admin_key}")
    print(f'try:       curl -H "Authorization: Bearer {admin_key}" {base}/v1/accounts')
    print("Ctrl-C stops everything.")
    sys.stdout.flush()
    await stop.wait()
    await asyncio.gather(api, worker, return_exceptions=True)
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)


async def _register_webhooks(settings: Settings, base: str) -> Settings:
    """Register the engine's endpoints with Stripe (the sandbox) and keep their secrets."""
    from engine.gateway import StripeGateway
    from engine.webhooks.setup import register_webhook_endpoints

    gateway = StripeGateway(settings.stripe.secret_key, settings.stripe.api_base)
    for _ in range(50):  # the sandbox may still be binding its port
        try:
            secrets_ = await register_webhook_endpoints(gateway, base)
            break
        except MarketplaceError:
            await asyncio.sleep(0.1)
    else:
        secrets_ = await register_webhook_endpoints(gateway, base)
    print(f"webhooks   {base}/webhooks/stripe and /webhooks/stripe/connect registered")
    return _replace(
        settings,
        "stripe",
        webhook_secrets=[secrets_.platform],
        connect_webhook_secrets=[secrets_.connect],
    )


async def _wait_healthy(base: str, api: asyncio.Task[None]) -> None:
    """Return once ``/health`` answers (or raise what the API task raised)."""
    import httpx

    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if api.done():
                api.result()
            try:
                if (await client.get(f"{base}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------- parser


def _parser(plugins: Plugins | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marketplace", description=__doc__)
    parser.add_argument("--config", help="TOML config file (default: MARKETPLACE_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack locally with embedded defaults")
    up.add_argument("--port", type=int, default=0, help="API port (default from config)")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--port", type=int, default=0)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=cmd_migrate)

    listing = sub.add_parser("plugins", help="list installed plugins and their hooks")
    listing.set_defaults(func=cmd_plugins)

    worker = sub.add_parser("worker", help="run a webhook worker")
    worker.set_defaults(func=cmd_worker)

    replay = sub.add_parser("replay", help="replay dead-lettered webhook events")
    replay.add_argument("--event", action="append", help="event id (repeatable)")
    replay.add_argument(
        "--account",
        help="replay every dead event of this mailbox (an account id, or a plugin's key)",
    )
    replay.set_defaults(func=cmd_replay)

    from engine.reconciliation.cli import configure as configure_reconcile

    reconcile = sub.add_parser(
        "reconcile", help="match Stripe's balance transactions with the ledger"
    )
    configure_reconcile(reconcile)
    reconcile.set_defaults(func=cmd_reconcile)

    setup = sub.add_parser("stripe-setup-webhooks", help="register webhook endpoints with Stripe")
    setup.add_argument("--url", required=True, help="public base URL of this API")
    setup.set_defaults(func=cmd_setup_webhooks)

    sandbox = sub.add_parser("sandbox", help="run the offline Stripe sandbox")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=12111)
    sandbox.add_argument("--state", help="file to persist sandbox state in")
    sandbox.set_defaults(func=cmd_sandbox)

    # The plugin developer kit's commands (docs/plugins.md); argparse-only imports.
    from engine.scaffold.command import add_new_plugin_command
    from engine.testing.command import add_conformance_command

    add_new_plugin_command(sub)
    add_conformance_command(sub)

    for command in plugins.cli_commands() if plugins else ():
        plugin_parser = sub.add_parser(command.name, help=command.help)
        command.configure(plugin_parser)
        plugin_parser.set_defaults(func=lambda a, s, p, _c=command: _c.run(a, s))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marketplace`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("-v", "--verbose", action="store_true")
    known, _ = pre.parse_known_args(argv)
    try:
        settings = _settings(known)
        configure_logging(
            "DEBUG" if known.verbose else settings.engine.log_level,
            json_lines=settings.engine.environment != "development",
        )
        plugins = build_plugins(settings)
    except ConfigError as exc:
        print(f"marketplace: config error: {exc.key}: {exc.problem}", file=sys.stderr)
        return EXIT_CONFIG
    args = _parser(plugins).parse_args(argv)
    try:
        result: int = args.func(args, settings, plugins)
    except ConfigError as exc:
        print(f"marketplace: config error: {exc.key}: {exc.problem}", file=sys.stderr)
        return EXIT_CONFIG
    except MarketplaceError as exc:
        print(f"marketplace: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    raise SystemExit(main())
