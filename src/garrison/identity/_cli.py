"""``garrison passport decode|verify``: look inside a passport, for operators.

``decode`` reads a token WITHOUT checking anything (and says so on its first line); ``verify``
checks it with the application's keys, exactly as a service of the application would.

Exit status: 0 the token decodes / verifies; 1 it does not (one line naming the reason);
2 bad usage (a missing folder, an invalid configuration, no keys to verify with).
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import typer

from garrison.core import ConfigError, GarrisonConfig, Unauthenticated, load_config

from ._model import Passport
from ._passport import PASSPORT_HEADER, PassportCodec, TokenInfo, inspect_token
from ._verify import dev_key_path, is_production, load_passport_codec

__all__ = ["passport_app"]

EXIT_INVALID = 1
"""The token does not decode or does not verify."""
EXIT_USAGE = 2
"""Bad usage: the command could not even try."""

passport_app = typer.Typer(
    name="passport",
    help="Decode or verify a passport (the garrison-passport header).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
"""The ``passport`` command group; ``garrison.cli`` mounts it as ``garrison passport``."""

TokenArgument = Annotated[
    str,
    typer.Argument(
        metavar="TOKEN",
        help="The passport, or '-' to read it from standard input; a leading "
        "'garrison-passport:' is ignored.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


@passport_app.command("decode")
def decode(token: TokenArgument, as_json: JsonOption = False) -> None:
    """Show a passport's header and body WITHOUT verifying it (marked UNVERIFIED).

    Never authorize on this output: anyone can write a token that decodes.
    Exits 1 when the token is not a passport.
    """
    text = _read_token(token)
    try:
        info = inspect_token(text)
    except Unauthenticated as exc:
        _invalid(exc.reason, str(exc))
    if as_json:
        _print_json({"verified": False, "header": _header(info), "passport": info.passport})
    else:
        typer.echo("UNVERIFIED: neither the signature nor the times were checked")
        _print_header(info)
        if info.passport is not None:
            _print_passport(info.passport)
    if info.passport is None:
        _invalid("malformed", f"the body does not decode as a version {info.version} passport")


@passport_app.command("verify")
def verify(
    token: TokenArgument,
    app_dir: Annotated[
        Path,
        typer.Option(
            "--app-dir",
            help="Folder of the application, holding garrison.toml: its [identity.passport] "
            "keys (or its development key) verify the token.",
        ),
    ] = Path("."),
    as_json: JsonOption = False,
) -> None:
    """Verify a passport with the application's keys, as its services do.

    Exits 0 when it verifies, 1 when it does not (naming the reason: bad_signature,
    expired, unknown_key ...), 2 when the application or its keys cannot be loaded.
    """
    text = _read_token(token)
    codec = _codec(app_dir)
    try:
        passport = codec.verify(text)
    except Unauthenticated as exc:
        if as_json:
            _print_json({"verified": False, "reason": exc.reason, "message": str(exc)})
            raise typer.Exit(EXIT_INVALID) from None
        _invalid(exc.reason, str(exc))
    info = inspect_token(text)  # verified: the header reads
    if as_json:
        _print_json({"verified": True, "header": _header(info), "passport": passport})
        return
    typer.echo(f"VALID: verified with key {info.kid!r} of {app_dir}")
    _print_header(info)
    _print_passport(passport)


# -- helpers ---------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    typer.echo(f"garrison passport: error: {' '.join(message.split())}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _invalid(reason: str, message: str) -> NoReturn:
    typer.echo(f"invalid passport: {reason}: {' '.join(message.split())}", err=True)
    raise typer.Exit(EXIT_INVALID)


def _read_token(token: str) -> str:
    text = sys.stdin.read() if token == "-" else token
    text = text.strip()
    prefix, sep, rest = text.partition(":")
    if sep and prefix.strip().lower() == PASSPORT_HEADER:
        text = rest.strip()
    if not text:
        _fail("empty token")
    return text


def _codec(app_dir: Path) -> PassportCodec:
    if not app_dir.is_dir():
        _fail(f"app folder {str(app_dir)!r} does not exist or is not a folder")
    try:
        config: GarrisonConfig = load_config(app_dir.resolve())
        # Never create a development key here: a new random key verifies nothing.
        codec = load_passport_codec(config, create_dev_key=False)
    except ConfigError as exc:
        _fail(str(exc))
    if codec is None:
        if is_production():
            _fail(
                f"{app_dir}: no [identity.passport] keys, and the development key is not used "
                "in production (GARRISON_ENV)"
            )
        _fail(
            f"{app_dir}: no [identity.passport] keys and no development key at "
            f"{dev_key_path(config)}"
        )
    return codec


def _header(info: TokenInfo) -> dict[str, Any]:
    return {
        "version": info.version,
        "alg": info.alg,
        "kid": info.kid,
        "degraded": info.degraded,
        "size": info.size,
    }


def _print_json(obj: Any) -> None:
    typer.echo(msgspec.json.format(msgspec.json.encode(obj), indent=2).decode())


def _print_header(info: TokenInfo) -> None:
    typer.echo(
        f"header    version {info.version}, {info.alg}, kid {info.kid!r}, "
        f"{'degraded, ' if info.degraded else ''}{info.size} bytes"
    )


def _when(ts: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return repr(ts)


def _relative(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never"
    return f"in {seconds:.0f} s" if seconds >= 0 else f"{-seconds:.0f} s ago"


def _print_passport(p: Passport) -> None:
    a = p.auth
    auth = f"{a.credential} from {a.issuer or '-'}, method {a.method or '-'}, {a.assurance.name}"
    rows = [
        ("txn", p.txn),
        ("issued", _when(p.issued_at)),
        ("expires", f"{_when(p.expires_at)} ({_relative(p.expires_at - time.time())})"),
        ("auth", auth),
    ]
    if p.user is not None:
        u = p.user
        rows.append(("user", u.subject))
        rows += [(k, v) for k, v in (("account", u.account), ("tenant", u.tenant)) if v]
        rows.append(("roles", ", ".join(u.roles) or "-"))
        rows.append(("scopes", " ".join(u.scopes) or "-"))
    if p.device is not None:
        rows.append(("device", f"{p.device.id} ({p.device.type}, {p.device.trust.name})"))
    if p.degraded:
        rows.append(("degraded", "yes: the credential could not be refreshed"))
    rows += [(f"ext.{k}", v) for k, v in sorted(p.ext.items())]
    for name, value in rows:
        typer.echo(f"{name:<9} {value}")
