"""Serialization: JSON for the wire and the operator, msgpack for stores. Both through msgspec.

One encoder/decoder pair per format is created once and reused: msgspec's encoders are
thread-safe and much cheaper to reuse than to rebuild per call.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

import msgspec

from ._errors import InvalidInput

__all__ = ["from_builtins", "json_decode", "json_encode", "msgpack_decode", "msgpack_encode"]

T = TypeVar("T")


def _enc_hook(obj: Any) -> Any:
    # pydantic models and other objects offering a plain-dict view serialize as that dict.
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    # TypeError, as json.dumps and msgspec itself raise for an unsupported type
    raise TypeError(f"cannot serialize objects of type {type(obj).__name__}")


_json_enc = msgspec.json.Encoder(enc_hook=_enc_hook)
_mp_enc = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def json_encode(obj: Any) -> bytes:
    """Encode ``obj`` (builtins, msgspec structs, dataclasses, pydantic models) to JSON bytes."""
    return _json_enc.encode(obj)


def msgpack_encode(obj: Any) -> bytes:
    """Encode ``obj`` to msgpack bytes."""
    return _mp_enc.encode(obj)


@overload
def json_decode(data: bytes | str) -> Any: ...
@overload
def json_decode(data: bytes | str, type: type[T]) -> T: ...
def json_decode(data: bytes | str, type: Any = Any) -> Any:
    """Decode JSON, validating against ``type``; raises :class:`InvalidInput` naming the path."""
    try:
        return msgspec.json.decode(data, type=type)
    except msgspec.ValidationError as exc:
        raise InvalidInput(str(exc), [{"loc": _loc(str(exc)), "msg": str(exc)}]) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


@overload
def msgpack_decode(data: bytes) -> Any: ...
@overload
def msgpack_decode(data: bytes, type: type[T]) -> T: ...
def msgpack_decode(data: bytes, type: Any = Any) -> Any:
    """Decode msgpack, validating against ``type``; raises :class:`InvalidInput`."""
    try:
        return msgspec.msgpack.decode(data, type=type)
    except msgspec.ValidationError as exc:
        raise InvalidInput(str(exc), [{"loc": _loc(str(exc)), "msg": str(exc)}]) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed msgpack: {exc}") from None


def from_builtins(obj: Any, type: type[T], *, strict: bool = True) -> T:
    """Convert builtins (dicts, lists, strings ...) into ``type``, validating on the way."""
    try:
        return msgspec.convert(obj, type=type, strict=strict)
    except msgspec.ValidationError as exc:
        raise InvalidInput(str(exc), [{"loc": _loc(str(exc)), "msg": str(exc)}]) from None


def _loc(message: str) -> list[str]:
    # msgspec ends messages with "- at `$.a.b[0]`"; turn that into ["a", "b", "0"]. A missing or
    # unknown field is named only in the message ("Object missing required field `x`"): append it.
    marker = "- at `$"
    i = message.rfind(marker)
    path = message[i + len(marker) :].rstrip("`") if i >= 0 else ""
    loc = [p for p in path.replace("[", ".").replace("]", "").split(".") if p]
    if message.startswith(("Object missing required field `", "Object contains unknown field `")):
        loc.append(message.split("`")[1])
    return loc
