"""Turning a handler's signature into a request decoder, once, at decoration time.

Each parameter of a route handler is classified by its name and annotation:

* named in the path template (``/sites/{site}``)     -> a path parameter, converted to its type;
* ``starlette.requests.Request``                      -> the request itself;
* a type registered with :meth:`Service.inject`      -> built by that factory (e.g. ``Passport``);
* a msgspec Struct, pydantic model, dataclass, dict   -> the JSON body (at most one);
* ``Annotated[T, Header("name")]``                     -> a request header;
* anything else (``int``, ``str``, ``list[str]`` ...) -> a query parameter.

Conversion uses msgspec in lax mode (``"5"`` -> ``5``); every failure becomes an
:class:`~garrison.core.InvalidInput` whose ``detail`` names where (``["query", "limit"]``).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from starlette.requests import Request

from garrison.core import InvalidInput

__all__ = ["Body", "Header", "Injector", "ParamSpec", "analyse"]

Injector = Callable[[Request], Awaitable[Any]]
_NO_DEFAULT: Any = inspect.Parameter.empty


@dataclasses.dataclass(frozen=True)
class Header:
    """Mark a parameter as read from a header: ``Annotated[str, Header("x-request-id")]``."""

    name: str


@dataclasses.dataclass(frozen=True)
class Body:
    """Mark a parameter as the JSON body, for types that would otherwise be a query parameter."""


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """How one handler parameter is obtained."""

    name: str
    kind: str  # path | query | header | body | request | inject
    type: Any
    default: Any
    source: str = ""
    """The path/query/header name it is read from."""
    decode: Callable[[bytes], Any] | None = None
    """For bodies: bytes -> value (raises InvalidInput)."""
    inject: Injector | None = None


_UNIONS = (typing.Union, types.UnionType)
_NAMED_IN_MESSAGE = ("Object missing required field `", "Object contains unknown field `")


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_validate_json")


def _is_body_type(tp: Any) -> bool:
    if typing.get_origin(tp) in _UNIONS:  # ``Item | None`` is still a body
        return any(_is_body_type(a) for a in typing.get_args(tp) if a is not type(None))
    if isinstance(tp, type):
        if issubclass(tp, msgspec.Struct) or dataclasses.is_dataclass(tp) or _is_pydantic(tp):
            return True
        return tp is dict
    return typing.get_origin(tp) is dict


def _injected(tp: Any, injectors: Mapping[Any, Injector]) -> Injector | None:
    """The factory for ``tp`` or for ``X`` in ``X | None`` (the factory may return None)."""
    if tp in injectors:
        return injectors[tp]
    if typing.get_origin(tp) in _UNIONS:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and args[0] in injectors:
            return injectors[args[0]]
    return None


def _leaves(tp: Any) -> list[Any]:
    """The scalar types inside ``tp`` once unions, ``Optional`` and collections are unwrapped."""
    origin = typing.get_origin(tp)
    if origin in _UNIONS or origin in (list, tuple, set, frozenset):
        args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
        return [leaf for a in args for leaf in _leaves(a)]
    return [tp]


def _check_convertible(fn: Callable[..., Any], name: str, kind: str, tp: Any) -> None:
    # A type msgspec cannot build from a string (a plain class, a Callable ...) would reject every
    # request with a 422; say so at decoration time instead.
    for leaf in _leaves(tp):
        try:
            info = msgspec.inspect.type_info(leaf)
        except TypeError as exc:
            raise TypeError(f"{fn.__qualname__}: {kind} parameter {name!r}: {exc}") from None
        if isinstance(info, msgspec.inspect.CustomType) and leaf is not object:
            raise TypeError(
                f"{fn.__qualname__}: {kind} parameter {name!r}: cannot be read from a string "
                f"as {leaf!r}; use a scalar type, or mark it Body() to read the JSON body"
            )


def _body_decoder(name: str, tp: Any) -> Callable[[bytes], Any]:
    if _is_pydantic(tp):
        from pydantic import ValidationError

        def decode_pydantic(raw: bytes) -> Any:
            try:
                return tp.model_validate_json(raw)
            except ValidationError as exc:
                errors = [
                    {"loc": ["body", *map(str, e["loc"])], "msg": e["msg"]} for e in exc.errors()
                ]
                raise InvalidInput(f"invalid body: {errors[0]['msg']}", errors) from None

        return decode_pydantic
    decoder = msgspec.json.Decoder(tp)

    def decode(raw: bytes) -> Any:
        if not raw:
            raise InvalidInput("a JSON body is required", [{"loc": ["body"], "msg": "missing"}])
        try:
            return decoder.decode(raw)
        except msgspec.ValidationError as exc:
            msg, _, path = str(exc).partition(" - at `$")
            loc = ["body"]
            loc += [p for p in path.rstrip("`").replace("[", ".").replace("]", "").split(".") if p]
            if msg.startswith(_NAMED_IN_MESSAGE):
                loc.append(msg.split("`")[1])  # msgspec names the field only in the message
            raise InvalidInput(f"invalid body: {msg}", [{"loc": loc, "msg": msg}]) from None
        except msgspec.DecodeError as exc:
            raise InvalidInput(
                f"malformed JSON body: {exc}", [{"loc": ["body"], "msg": str(exc)}]
            ) from None

    return decode


def analyse(
    fn: Callable[..., Any], path_params: set[str], injectors: Mapping[Any, Injector]
) -> list[ParamSpec]:
    """Classify every parameter of ``fn``; raises TypeError for a signature that cannot work."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except NameError as exc:
        raise TypeError(f"{fn.__qualname__}: cannot resolve annotation: {exc}") from None
    specs: list[ParamSpec] = []
    seen_body = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{fn.__qualname__}: *args/**kwargs are not supported in handlers")
        if p.kind == p.POSITIONAL_ONLY:  # handlers are called with keyword arguments
            raise TypeError(f"{fn.__qualname__}: positional-only parameter {p.name!r}")
        tp = hints.get(p.name, str)
        marker: Any = None
        if typing.get_origin(tp) is typing.Annotated:
            tp, *meta = typing.get_args(tp)
            marker = next((m for m in meta if isinstance(m, Header | Body)), None)
        if p.name in path_params:
            _check_convertible(fn, p.name, "path", tp)
            specs.append(ParamSpec(p.name, "path", tp, p.default, p.name))
        elif tp is Request:
            specs.append(ParamSpec(p.name, "request", tp, p.default))
        elif (injected := _injected(tp, injectors)) is not None:
            specs.append(ParamSpec(p.name, "inject", tp, p.default, inject=injected))
        elif isinstance(marker, Header):
            _check_convertible(fn, p.name, "header", tp)
            specs.append(ParamSpec(p.name, "header", tp, p.default, marker.name.lower()))
        elif isinstance(marker, Body) or _is_body_type(tp):
            if seen_body:
                raise TypeError(f"{fn.__qualname__}: more than one body parameter ({p.name})")
            seen_body = True
            specs.append(ParamSpec(p.name, "body", tp, p.default, decode=_body_decoder(p.name, tp)))
        else:
            _check_convertible(fn, p.name, "query", tp)
            specs.append(ParamSpec(p.name, "query", tp, p.default, p.name))
    missing = path_params - {s.name for s in specs}
    if missing:
        raise TypeError(f"{fn.__qualname__}: path parameters {sorted(missing)} have no argument")
    return specs


def _is_multi(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (list, tuple, set, frozenset):
        return True
    if origin in _UNIONS:
        return any(_is_multi(a) for a in typing.get_args(tp) if a is not type(None))
    return False


def convert(value: Any, spec: ParamSpec) -> Any:
    """Convert a raw string (or list of strings) to the parameter's type, lax like msgspec."""
    tp = spec.type
    if tp is str or tp is Any:
        return value
    try:
        # msgspec also converts enums by value, lax: "2" -> an IntEnum member, as for int.
        return msgspec.convert(value, tp, strict=False)
    except (msgspec.ValidationError, ValueError) as exc:
        msg = str(exc).split(" - at ")[0]
        raise InvalidInput(
            f"{spec.kind} parameter {spec.source!r}: {msg}",
            [{"loc": [spec.kind, spec.source], "msg": msg}],
        ) from None


async def resolve(specs: list[ParamSpec], request: Request) -> dict[str, Any]:
    """Build the handler's keyword arguments from ``request``; raises InvalidInput."""
    kwargs: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for spec in specs:
        kind = spec.kind
        try:
            if kind == "path":
                kwargs[spec.name] = convert(request.path_params[spec.source], spec)
            elif kind == "query":
                qp = request.query_params
                if spec.source in qp:
                    raw: Any = qp.getlist(spec.source) if _is_multi(spec.type) else qp[spec.source]
                    kwargs[spec.name] = convert(raw, spec)
                elif spec.default is not _NO_DEFAULT:
                    kwargs[spec.name] = spec.default
                else:
                    raise InvalidInput(
                        f"missing query parameter {spec.source!r}",
                        [{"loc": ["query", spec.source], "msg": "required"}],
                    )
            elif kind == "header":
                hv = request.headers.get(spec.source)
                if hv is not None:
                    kwargs[spec.name] = convert(hv, spec)
                elif spec.default is not _NO_DEFAULT:
                    kwargs[spec.name] = spec.default
                else:
                    raise InvalidInput(
                        f"missing header {spec.source!r}",
                        [{"loc": ["header", spec.source], "msg": "required"}],
                    )
            elif kind == "body":
                raw_body = await request.body()
                if not raw_body and spec.default is not _NO_DEFAULT:
                    kwargs[spec.name] = spec.default
                else:
                    assert spec.decode is not None
                    kwargs[spec.name] = spec.decode(raw_body)
            elif kind == "request":
                kwargs[spec.name] = request
            else:
                assert spec.inject is not None
                kwargs[spec.name] = await spec.inject(request)
        except InvalidInput as exc:
            errors.extend(exc.errors)
    if errors:
        first = errors[0]
        where = ".".join(map(str, first["loc"]))
        raise InvalidInput(f"invalid request: {where}: {first['msg']}", errors)
    return kwargs
