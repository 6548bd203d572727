"""The ``garrison`` command.

``run`` hosts one replica of one service in the current process; ``dev`` and ``demo`` start
every replica of every service as a process of its own under a
:class:`~garrison.service._supervisor.Supervisor`, each one running ``garrison run``; ``config
check`` validates ``garrison.toml``.

Bad input (a missing folder or file, an invalid configuration, an unknown service, a bad option
value) is reported as one line on stderr with exit status 2, never a traceback: the command
group below turns click's usage errors into that same shape.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import inspect
import os
import platform
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from typer.core import TyperGroup

from garrison._cli_streams import streams_app
from garrison._cli_workflows import workflows_app
from garrison.core import (
    ConfigError,
    GarrisonConfig,
    ServiceConfig,
    UsageError,
    configure_logging,
    get_logger,
    load_config,
)
from garrison.durable import DurableSettings
from garrison.identity._cli import passport_app
from garrison.identity._config import IdentityConfig
from garrison.resilience import ResilienceSettings
from garrison.service._supervisor import ProcessSpec, RestartPolicy, Supervisor
from garrison.streams import StreamsSettings

__all__ = ["main"]

log = get_logger("cli")

DemoMain = Callable[[GarrisonConfig], Awaitable[None]]
EXIT_USAGE = 2
"""Exit status for bad input, as click uses for usage errors."""


# Typer either uses click or vendors it (typer._click); reach click's error classes through
# typer's public BadParameter rather than importing one or the other.
_CLICK_ERROR = cast(
    type[Exception], next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
)
_USAGE_ERROR = cast(
    type[Exception], next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
)


class _Group(TyperGroup):
    """A command group whose usage errors are one line: ``garrison run: error: ...``."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.Abort:
            _echo_error("aborted")
            sys.exit(1)
        except _CLICK_ERROR as exc:
            error: Any = exc
            if type(exc).__name__ == "NoArgsIsHelpError":
                if error.message.strip():  # typer's rich help is printed already, click's not
                    error.show()
                sys.exit(error.exit_code)
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else (prog_name or "garrison")
            hint = f" (see '{where} --help')" if isinstance(exc, _USAGE_ERROR) else ""
            _echo_error(f"{where}: error: {error.format_message()}{hint}")
            sys.exit(error.exit_code)
        # Without standalone mode click returns the code of a typer.Exit, or the command's value.
        sys.exit(rv if isinstance(rv, int) else 0)


main = typer.Typer(
    name="garrison",
    cls=_Group,
    help="garrison: a runtime for resilient, stateful microservices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
"""The ``garrison`` command (a Typer app; the console script calls it)."""

config_app = typer.Typer(
    name="config",
    help="Inspect and validate garrison.toml.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
main.add_typer(config_app)
main.add_typer(passport_app)
main.add_typer(workflows_app)
main.add_typer(streams_app)

AppDirArgument = Annotated[
    Path,
    typer.Argument(metavar="APP_DIR", help="Folder of the application, holding garrison.toml."),
]


# --------------------------------------------------------------------------------------------
# commands


@main.command()
def run(
    service: Annotated[
        str, typer.Argument(metavar="SERVICE", help="Name of the service, a key of [services].")
    ],
    app_dir: Annotated[
        Path, typer.Option("--app-dir", help="Folder of the application, holding garrison.toml.")
    ] = Path("."),
    replica: Annotated[
        int,
        typer.Option(
            "--replica", min=0, help="Which replica to run; it listens on port + REPLICA."
        ),
    ] = 0,
) -> None:
    """Serve one replica of one service until SIGTERM or Ctrl-C.

    This is what `garrison dev` runs for each replica; run it yourself to host one process of
    a service on a machine of its own.
    """
    config = _load(app_dir)
    svc = _service(config, service)
    if replica >= svc.replicas:
        _fail(
            f"--replica {replica}: service {service!r} has {svc.replicas} replica(s), 0 to "
            f"{svc.replicas - 1}"
        )
    if svc.port + replica > 65535:
        _fail(f"--replica {replica}: port {svc.port} + {replica} is past 65535")
    configure_logging(config.log.level, config.log.format)
    from garrison.service import run_service  # imported here: the other commands do not need it

    # uvicorn re-raises the stop signal once it has shut down, whose default action would end
    # the process "killed by SIGTERM"; a stop that was asked for is a clean exit.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_cleanly)
    try:
        run_service(config, service, replica)
    except UsageError as exc:
        _fail(str(exc))


@main.command()
def gateway(app_dir: AppDirArgument = Path(".")) -> None:
    """Serve the app's gateway ([gateway] in garrison.toml) until SIGTERM or Ctrl-C.

    The edge: it resolves each request's credential into a passport ([identity]), applies
    the route's rules and proxies to the services. `garrison dev` starts it too when the
    app has a [gateway] section.
    """
    config = _load(app_dir)
    if not config.gateway:
        _fail(f"no [gateway] section in {Path(config.root) / 'garrison.toml'}")
    from garrison.gateway import run_gateway  # imported here: the other commands do not need it

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_cleanly)
    try:
        run_gateway(config)
    except UsageError as exc:
        _fail(str(exc))


@main.command()
def dev(app_dir: AppDirArgument = Path(".")) -> None:
    """Run every replica of every service (and the gateway); restart crashes; stop on Ctrl-C.

    Each replica is a process of its own (`garrison run`), and so is the gateway (`garrison
    gateway`) when garrison.toml has a [gateway] section. Its output is prefixed with its
    name; a process that crashes is restarted with exponential backoff ([dev] in
    garrison.toml); Ctrl-C or SIGTERM stops them all cleanly.
    """
    config = _load(app_dir)
    specs = _process_specs(config)
    configure_logging(config.log.level, config.log.format)

    async def supervise() -> None:
        supervisor = _supervisor(config, specs)
        log.info("starting %d processes; Ctrl-C stops them", len(specs))
        await supervisor.run()
        log.info("all processes stopped")

    asyncio.run(supervise())


@main.command()
def demo(
    app_dir: AppDirArgument = Path("."),
    exit_after: Annotated[
        float | None,
        typer.Option(
            "--exit-after",
            min=0,
            metavar="SECONDS",
            help="Stop this many seconds after the demo ran, instead of waiting for Ctrl-C "
            "(for scripts and CI).",
        ),
    ] = None,
    health_timeout: Annotated[
        float,
        typer.Option(
            "--health-timeout",
            min=0,
            metavar="SECONDS",
            help="How long every service may take to answer /healthz.",
        ),
    ] = 60.0,
) -> None:
    """Run the app, show its URLs once healthy, then run its demo.py.

    The services run as with `garrison dev`. demo.py, if the app folder has one, defines
    `async def main(config) -> None` that drives some traffic and prints what happened.
    Exits 1 if a service never became healthy or the demo failed.
    """
    config = _load(app_dir)
    specs = _process_specs(config)
    demo_main = _load_demo(Path(config.root) / "demo.py")
    configure_logging(config.log.level, config.log.format)
    code = asyncio.run(_demo(config, specs, demo_main, exit_after, health_timeout))
    raise typer.Exit(code)


@config_app.command("check")
def config_check(app_dir: AppDirArgument = Path(".")) -> None:
    """Validate garrison.toml (and GARRISON_* overrides); list the services.

    Exits 2 with the file, the key and the problem when the configuration is invalid.
    """
    config = _load(app_dir)
    table = Table(title=f"app {config.app.name}: {len(config.services)} service(s)")
    for column in ("service", "app", "replicas", "urls", "env"):
        table.add_column(column, overflow="fold")
    for name, svc in config.services.items():
        table.add_row(
            name, svc.app, str(svc.replicas), "\n".join(svc.urls()), ", ".join(sorted(svc.env))
        )
    console = Console()
    console.print(table)
    console.print(f"ok: {Path(config.root) / 'garrison.toml'}", highlight=False)


@main.command()
def version() -> None:
    """Print the version of garrison and of Python."""
    try:
        ver = importlib.metadata.version("garrison")
    except importlib.metadata.PackageNotFoundError:
        ver = "0+unknown (not installed)"
    typer.echo(f"garrison {ver} (Python {platform.python_version()})")


# --------------------------------------------------------------------------------------------
# helpers


def _exit_cleanly(signum: int, frame: object) -> NoReturn:
    raise SystemExit(0)


def _echo_error(message: str) -> None:
    typer.echo(" ".join(message.split("\n")), err=True)


def _fail(message: str) -> NoReturn:
    _echo_error(f"garrison: error: {message}")
    raise typer.Exit(EXIT_USAGE)


def _load(app_dir: Path) -> GarrisonConfig:
    if not app_dir.exists():
        _fail(f"app folder {str(app_dir)!r} does not exist")
    try:
        config = load_config(app_dir)
        # The pillars' own sections are validated here too, so that every command (and
        # `config check`) refuses a bad garrison.toml before anything starts.
        ResilienceSettings.from_config(config)
        DurableSettings.from_config(config)
        StreamsSettings.from_config(config)
        if config.identity:
            IdentityConfig.from_config(config)
    except ConfigError as exc:
        _fail(str(exc))
    return config


def _service(config: GarrisonConfig, name: str) -> ServiceConfig:
    try:
        return config.service(name)
    except ConfigError as exc:
        _fail(str(exc))


def _replica_url(svc: ServiceConfig, replica: int) -> str:
    """Where replica ``replica`` of ``svc`` can be reached from this machine."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(svc.host, svc.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{svc.port + replica}"


def _service_argv(config: GarrisonConfig, name: str, replica: int) -> list[str]:
    """The command that runs one replica (the child runs ``garrison run``)."""
    return [
        sys.executable, "-m", "garrison", "run", name,
        "--app-dir", config.root, "--replica", str(replica),
    ]  # fmt: skip


def _process_specs(config: GarrisonConfig) -> list[ProcessSpec]:
    """One process per replica of each service; ``api`` alone, or ``api.0``, ``api.1`` ..."""
    if not config.services:
        _fail(f"no services declared in {Path(config.root) / 'garrison.toml'}")
    # Unbuffered, so a child's output shows up as it is written, not when a buffer fills.
    base = {**os.environ, "PYTHONUNBUFFERED": "1"}
    specs = []
    for name, svc in config.services.items():
        for i in range(svc.replicas):
            specs.append(
                ProcessSpec(
                    name=name if svc.replicas == 1 else f"{name}.{i}",
                    argv=_service_argv(config, name, i),
                    env={**base, **svc.env},
                    cwd=config.root,
                    health_url=f"{_replica_url(svc, i)}/healthz",
                )
            )
    url = _gateway_url(config)
    if url is not None:
        name = "gateway" if "gateway" not in config.services else "garrison-gateway"
        specs.append(
            ProcessSpec(
                name=name,
                argv=[sys.executable, "-m", "garrison", "gateway", config.root],
                env=base,
                cwd=config.root,
                health_url=f"{url}/_garrison/healthz",
            )
        )
    return specs


def _gateway_url(config: GarrisonConfig) -> str | None:
    """The gateway's URL when the app has one ([gateway] and [identity] validated first, so a
    bad key fails here rather than in a restarting child)."""
    if not config.gateway:
        return None
    from garrison.gateway import gateway_url

    try:
        IdentityConfig.from_config(config)
        return gateway_url(config)
    except ConfigError as exc:
        _fail(str(exc))


def _supervisor(config: GarrisonConfig, specs: list[ProcessSpec]) -> Supervisor:
    return Supervisor(
        specs, policy=RestartPolicy.from_config(config.dev), stop_timeout=config.dev.stop_timeout
    )


def _load_demo(path: Path) -> DemoMain | None:
    """The ``main`` of the app's ``demo.py``; ``None`` when there is no such file."""
    if not path.is_file():
        return None
    root = str(path.parent)
    if root not in sys.path:
        sys.path.insert(0, root)  # so demo.py can import the app's modules
    spec = importlib.util.spec_from_file_location("garrison_app_demo", path)
    if spec is None or spec.loader is None:
        _fail(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        _fail(f"{path}: import failed: {type(exc).__name__}: {exc}")
    demo_main = getattr(module, "main", None)
    if not inspect.iscoroutinefunction(demo_main):
        _fail(f"{path}: expected a function `async def main(config) -> None`")
    return demo_main


def _urls_panel(config: GarrisonConfig, exit_after: float | None) -> Panel:
    table = Table(box=None, show_header=True, header_style="bold")
    for column in ("service", "url", "also try"):
        table.add_column(column, no_wrap=True)
    for name, svc in config.services.items():
        for i in range(svc.replicas):
            label = name if svc.replicas == 1 else f"{name}.{i}"
            table.add_row(label, _replica_url(svc, i), "/healthz  /metrics")
    url = _gateway_url(config)
    if url is not None:
        table.add_row("gateway", url, "/_garrison/healthz  /_garrison/metrics")
    until = "Ctrl-C to stop" if exit_after is None else f"stopping after {exit_after:g}s"
    return Panel(
        table, title=f"garrison demo: {config.app.name} is up", subtitle=until, expand=False
    )


async def _demo(
    config: GarrisonConfig,
    specs: list[ProcessSpec],
    demo_main: DemoMain | None,
    exit_after: float | None,
    health_timeout: float,
) -> int:
    supervisor = _supervisor(config, specs)
    console = Console()

    async def show() -> int:
        unhealthy = await supervisor.wait_healthy(health_timeout)
        if unhealthy:
            urls = {s.name: s.health_url for s in specs}
            which = ", ".join(f"{n} ({urls[n]})" for n in unhealthy)
            _echo_error(f"garrison demo: error: not healthy within {health_timeout:g}s: {which}")
            return 1
        console.print(_urls_panel(config, exit_after))
        if demo_main is not None:
            try:
                await demo_main(config)
            except Exception:
                log.exception("demo.py failed")
                return 1
        if exit_after is None:
            await asyncio.Event().wait()  # until Ctrl-C / SIGTERM cancels this
        else:
            await asyncio.sleep(exit_after)
        return 0

    code = await supervisor.run(show())
    return 0 if code is None else code  # None: stopped by a signal, a clean stop
