"""Payloads: encode to msgpack with a size limit; decode with the type the code annotates.

A value crosses the journal as bytes even on the first run: the workflow always receives the
*decoded* form of what was recorded, so a dataclass result is a dataclass (decoded with the
activity's return annotation) on the first run and on every replay alike, and the code cannot
behave differently after a recovery. Types msgspec does not know (pydantic models) are rebuilt
with their ``model_validate``; without an annotation a value comes back as builtins.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import msgspec

from garrison.core import msgpack_encode

from ._errors import PayloadTooLarge

__all__ = [
    "Decode",
    "arg_decoders",
    "decode_any",
    "decoder_for",
    "encode",
    "encode_args",
    "return_decoder",
    "split_args",
]

Decode = Callable[[bytes], Any]

_any = msgspec.msgpack.Decoder()


def encode(value: Any, what: str, limit: int) -> bytes:
    """``value`` as msgpack; :class:`PayloadTooLarge` naming ``what`` past ``limit`` bytes."""
    try:
        data = msgpack_encode(value)
    except TypeError as exc:
        raise TypeError(f"{what} cannot be stored: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLarge(
            f"{what} is {len(data):,} bytes serialized, over the limit of {limit:,} bytes "
            "(Limits.max_payload_bytes): store large data elsewhere and pass a reference"
        )
    return data


def encode_args(args: tuple[Any, ...] | list[Any], what: str, limit: int) -> bytes:
    """Arguments as a msgpack array of separately encoded values, so that each one is decoded
    with its own parameter's annotation; :class:`PayloadTooLarge` past ``limit`` in all."""
    parts = []
    for i, a in enumerate(args):
        try:
            parts.append(msgpack_encode(a))
        except TypeError as exc:
            raise TypeError(f"argument {i + 1} of {what} cannot be stored: {exc}") from None
    return encode(parts, f"the arguments of {what}", limit)


def split_args(data: bytes) -> list[bytes]:
    """The separately encoded values of :func:`encode_args`."""
    parts: list[bytes] = _args.decode(data)
    return parts


_args = msgspec.msgpack.Decoder(list[bytes])


def decode_any(data: bytes) -> Any:
    """Decode to builtins."""
    return _any.decode(data)


@lru_cache(maxsize=1024)
def decoder_for(tp: Any) -> Decode:
    """A decoder producing ``tp`` (``Any`` and unannotated: builtins)."""
    if tp is Any or tp is inspect.Parameter.empty or tp is None or tp is type(None):
        return _any.decode
    try:
        dec = msgspec.msgpack.Decoder(tp)
    except TypeError:
        validate = getattr(tp, "model_validate", None)
        if callable(validate):
            return lambda data: validate(_any.decode(data))
        return _any.decode
    return dec.decode


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = inspect.unwrap(fn)
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to builtins
        return {}


def return_decoder(fn: Callable[..., Any]) -> Decode:
    """The decoder of ``fn``'s return annotation (awaitables unwrapped by ``async def``)."""
    return decoder_for(_hints(fn).get("return", Any))


def arg_decoders(fn: Callable[..., Any], skip: int = 1) -> tuple[list[Decode], Decode | None]:
    """Decoders for ``fn``'s positional parameters after the first ``skip`` (the context), and
    for its ``*args`` if it has one."""
    hints = _hints(fn)
    params = list(inspect.signature(inspect.unwrap(fn)).parameters.values())[skip:]
    fixed: list[Decode] = []
    star: Decode | None = None
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            fixed.append(decoder_for(hints.get(p.name, Any)))
        elif p.kind is p.VAR_POSITIONAL:
            star = decoder_for(hints.get(p.name, Any))
    return fixed, star
