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
import os
import secrets
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from engine.core.errors import ConfigError, MarketplaceError
from engine.core.plugins import Plugins, build_plugins, installed_plugins
from engine.core.settings import (
    ApiSettings,
    Settings,
    load_settings,
    replace_section,
    require_database_url,
    require_nats_url,
)
from engine.observability import configure_logging

__all__ = ["main"]

log = logging.getLogger("marketplace")

EXIT_CONFIG = 2

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a long-lived process's ``main`` on uvloop, as uvicorn's own command does.

    uvloop's transports and scheduling are C: the webhook intake and the worker
    spend less of each request in the event loop. ``MARKETPLACE_EVENT_LOOP=asyncio``
    (or a platform without uvloop) keeps the standard loop.
    """
    if os.environ.get("MARKETPLACE_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:  # not on this platform (Windows): the standard loop
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def _settings(args: argparse.Namespace) -> Settings:
    path = Path(args.config) if getattr(args, "config", None) else None
    return load_settings(path)


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

    ran = asyncio.run(migrate(require_database_url(settings), plugins.table_apps()))
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


async def _serve_api(
    settings: Settings, plugins: Plugins, stop: asyncio.Event, listener: socket.socket
) -> None:
    """Serve the API on ``listener`` until ``stop`` is set; raise if the server ends first."""
    import uvicorn

    from engine.api.app import create_app
    from engine.services import Services
    from engine.supervision import wait_for_stop

    services = await Services.start(settings, plugins=plugins)
    try:
        app = create_app(services)
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        server = _quiet_server(config)
        task = asyncio.create_task(server.serve(sockets=[listener]))
        try:
            await wait_for_stop(stop, {"the API server": task})
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await task
    finally:
        await services.close()


def _listen(settings: Settings, port: int, *, explicit: bool) -> socket.socket:
    """Bind the API's port, or a free one when the default is taken (never an explicit one).

    Raises:
        ConfigError: the port asked for (``--port`` or ``api.port``) is in use.
    """
    from engine.infra.processes import bind_listener

    host = settings.api.host
    try:
        return bind_listener(host, port)
    except OSError as exc:
        if explicit or port != ApiSettings().port:
            raise ConfigError(
                "api.port", f"cannot listen on {host}:{port}: {exc.strerror}"
            ) from None
        listener = bind_listener(host, 0)
        print(f"port {port} is in use; the API takes port {listener.getsockname()[1]} instead")
        return listener


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def cmd_serve(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Run the API server only (production: many of these behind a load balancer)."""
    listener = _listen(settings, args.port or settings.api.port, explicit=True)
    port = listener.getsockname()[1]
    settings = replace_section(settings, "api", port=port)
    log.info("API listening on http://%s:%d", settings.api.host, port)

    async def run() -> None:
        await _serve_api(settings, plugins, _stop_event(), listener)

    run_loop(run())
    return 0


# ---------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Run one webhook worker (run as many as you like, on any machines)."""
    from engine.worker.runtime import run_worker

    require_database_url(settings)
    require_nats_url(settings)

    async def run() -> None:
        await run_worker(settings, plugins=plugins, stop=_stop_event())

    run_loop(run())
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
        scheduler = Scheduler(broker)
        try:
            accounts = await make_mailbox(services).replay(
                event_ids=args.event or (), account=args.account
            )
            for account in accounts:
                await scheduler.requeue(account)
            return accounts
        finally:
            await scheduler.close(wait_seconds=30)
            await broker.shutdown()
            await services.close()

    accounts = asyncio.run(run())
    print(f"replaying {', '.join(accounts)}" if accounts else "nothing to replay")
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Match Stripe's balance transactions with the ledger; exit 3 when something differs."""
    from engine.reconciliation.cli import run

    require_database_url(settings)
    return run(args, settings, plugins)


def cmd_payouts_refresh(args: argparse.Namespace, settings: Settings, plugins: Plugins) -> int:
    """Apply Stripe's payouts of every account (or of ``--account``) to the records and the
    ledger: payouts whose events were lost converge on Stripe's status. Incremental (the
    payouts created since each account's last refresh, and its open ones) unless
    ``--full``."""
    from engine.payments.payouts import refresh_all_payouts
    from engine.services import Services

    require_database_url(settings)

    async def run() -> dict[str, list[Any]]:
        services = await Services.start(settings, plugins=plugins, connect_nats=False)
        try:
            return await refresh_all_payouts(
                services.db.pool,
                services.gateway,
                services.ledger,
                args.account or None,
                full=args.full,
            )
        finally:
            await services.close()

    wanted = args.account or None
    applied = asyncio.run(run())
    for account, payouts in applied.items():
        statuses = ", ".join(
            f"{found.record.stripe_payout_id} {found.record.status}" for found in payouts
        )
        print(f"{account}: {len(payouts)} payout(s){': ' + statuses if statuses else ''}")
    failed = [account for account in wanted or () if account not in applied]
    if wanted is None or not failed:
        return 0
    print(f"marketplace: refreshing failed for {', '.join(failed)}", file=sys.stderr)
    return 1


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
    from engine.infra.stack_file import RunningStack

    data_dir = settings.data_path
    running = RunningStack.read(data_dir)
    if running is not None:
        # Its PostgreSQL and NATS would be adopted, then stopped under it when this one ends.
        print(
            f"marketplace: up already runs on {data_dir} (pid {running.pid}, api "
            f"{running.api_url}); use that one, stop it first (Ctrl-C), or start this one "
            f"on another data directory (MARKETPLACE_DATA_DIR)",
            file=sys.stderr,
        )
        return 1
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = _Stack()
    try:
        if not settings.database.url:
            postgres = EmbeddedPostgres(data_dir / "postgres")
            url = postgres.start()
            stack.started(postgres.stop)
            settings = replace_section(settings, "database", url=url)
            print(f"postgres   {url}  (log: {postgres.log_path})")
        if not settings.nats.url:
            nats_server = EmbeddedNats(data_dir / "nats")
            url = nats_server.start()
            stack.started(nats_server.stop)
            settings = replace_section(settings, "nats", url=url)
            print(f"nats       {url}")
        from engine.core.db import migrate

        asyncio.run(migrate(settings.database.url, plugins.table_apps()))
        admin_key = settings.api.bootstrap_admin_key or _admin_key(data_dir)
        # The port is ours before anything prints it.
        listener = _listen(settings, args.port or settings.api.port, explicit=bool(args.port))
        stack.started(listener.close)
        port = listener.getsockname()[1]
        settings = replace_section(
            settings, "api", bootstrap_admin_key=admin_key, port=port, ready_requires_worker=True
        )
        base = f"http://{settings.api.host}:{port}"
        if not settings.engine.public_url:
            settings = replace_section(settings, "engine", public_url=base)
        stack.started(lambda: RunningStack.remove(data_dir))
        run_loop(
            _up(
                settings,
                plugins,
                data_dir=data_dir,
                admin_key=admin_key,
                base=base,
                listener=listener,
            )
        )
    finally:
        stack.stop()
    return 0


async def _up(
    settings: Settings,
    plugins: Plugins,
    *,
    data_dir: Path,
    admin_key: str,
    base: str,
    listener: socket.socket,
) -> None:
    import uvicorn

    from engine.infra.processes import bind_listener
    from engine.infra.stack_file import RunningStack
    from engine.supervision import TaskEnded, wait_for_stop

    stop = _stop_event()
    tasks: dict[str, asyncio.Task[None]] = {}
    servers: list[Any] = []
    sandbox_base = ""
    try:
        if not settings.stripe.api_base:
            from engine.sandbox import create_app as create_sandbox

            sandbox_listener = bind_listener("127.0.0.1", 0)
            sandbox = _quiet_server(
                uvicorn.Config(
                    create_sandbox(persist_path=data_dir / "sandbox.state"), log_level="warning"
                )
            )
            servers.append(sandbox)
            tasks["the Stripe sandbox"] = asyncio.create_task(
                sandbox.serve(sockets=[sandbox_listener])
            )
            sandbox_base = f"http://127.0.0.1:{sandbox_listener.getsockname()[1]}"
            settings = replace_section(settings, "stripe", api_base=sandbox_base)
            print(f"sandbox    {sandbox_base}  (offline Stripe)")
        if not settings.stripe.webhook_secrets or not settings.stripe.connect_webhook_secrets:
            settings = await _register_webhooks(settings, base)
        from engine.worker.runtime import run_worker

        tasks["the webhook worker"] = asyncio.create_task(
            run_worker(settings, plugins=plugins, stop=stop)
        )
        tasks["the API"] = asyncio.create_task(_serve_api(settings, plugins, stop, listener))
        await _wait_ready(base, tasks)
        RunningStack(
            pid=os.getpid(),
            api_url=base,
            database_url=settings.database.url,
            nats_url=",".join(settings.nats.servers),
            stripe_api_base=sandbox_base,
            webhook_secrets=list(settings.stripe.webhook_secrets),
            connect_webhook_secrets=list(settings.stripe.connect_webhook_secrets),
        ).write(data_dir)
        print(f"api        {base}")
        print(f"docs       {base}/schema/swagger")
        print(f"ready      {base}/ready  (database, NATS and the worker)")
        print(f"dashboard  {base}/dashboard  (sign in with the admin key below)")
        print(f"admin key  {admin_key}")
        print(f'try:       curl -H "Authorization: Bearer {admin_key}" {base}/v1/accounts')
        print("Commands run in this directory reach this stack (e.g. `marketplace plugins`).")
        print("Ctrl-C stops everything.")
        sys.stdout.flush()
        try:
            await wait_for_stop(stop, tasks)
        except TaskEnded as ended:
            raise UpFailed(str(ended)) from None
    finally:
        stop.set()
        for name, task in tasks.items():
            if name != "the Stripe sandbox":
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks.values(), return_exceptions=True)


class UpFailed(MarketplaceError):
    """A part of the ``up`` stack died; the log above has its traceback."""

    code = "stack_failed"


async def _wait_ready(base: str, tasks: dict[str, asyncio.Task[None]]) -> None:
    """Return once ``/ready`` answers 200 (the worker pulling), or raise what ended a task."""
    import httpx

    from engine.supervision import TaskEnded

    last = "no answer yet"
    async with httpx.AsyncClient() as client:
        for _ in range(1200):
            for name, task in tasks.items():
                if task.done():
                    cause = None if task.cancelled() else task.exception()
                    if cause is not None:
                        log.error("%s died while starting", name, exc_info=cause)
                    raise UpFailed(str(TaskEnded(name, cause)))
            try:
                response = await client.get(f"{base}/ready")
                if response.status_code == 200:
                    return
                last = str(response.json().get("detail", response.status_code))
            except (httpx.HTTPError, ValueError) as exc:
                last = str(exc) or type(exc).__name__
            await asyncio.sleep(0.1)
    raise UpFailed(f"the stack did not become ready within 120 s: {last}")


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
    return replace_section(
        settings,
        "stripe",
        webhook_secrets=[secrets_.platform],
        connect_webhook_secrets=[secrets_.connect],
    )


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

    payouts = sub.add_parser("payouts", help="payouts to the bank")
    payouts_sub = payouts.add_subparsers(dest="payouts_command", required=True)
    refresh = payouts_sub.add_parser(
        "refresh", help="apply Stripe's payouts (status, postings) of every account or one"
    )
    refresh.add_argument(
        "--account",
        action="append",
        help="acct_... or platform (repeatable; default: the platform and every known account)",
    )
    refresh.add_argument(
        "--full",
        action="store_true",
        help="list every payout of each account, not only those since its last refresh",
    )
    refresh.set_defaults(func=cmd_payouts_refresh)

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
    # Read wherever they stand (``marketplace up --config FILE``, as ``make up
    # UP_ARGS=...`` puts it), then left out of what the commands parse.
    known, rest = pre.parse_known_args(argv)
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
    args = _parser(plugins).parse_args(rest)
    if args.func is not cmd_up:
        from engine.infra.stack_file import attach_running_stack

        settings = attach_running_stack(settings)
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
