"""JSON and msgpack through msgspec: round trips, and InvalidInput that names the field."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import msgspec
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison.core import (
    InvalidInput,
    UsageError,
    from_builtins,
    json_decode,
    json_encode,
    msgpack_decode,
    msgpack_encode,
)


class Item(msgspec.Struct, forbid_unknown_fields=True):
    sku: str
    qty: int


class Order(msgspec.Struct):
    id: str
    items: list[Item]
    tags: dict[str, int] = {}
    note: str | None = None


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Reading(pydantic.BaseModel):
    device: str
    at: dt.date


items = st.builds(Item, sku=st.text(), qty=st.integers(min_value=-(2**63), max_value=2**63 - 1))
orders = st.builds(
    Order,
    id=st.text(),
    items=st.lists(items, max_size=5),
    tags=st.dictionaries(st.text(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    note=st.none() | st.text(),
)

ENCODINGS = [
    pytest.param(json_encode, json_decode, id="json"),
    pytest.param(msgpack_encode, msgpack_decode, id="msgpack"),
]


@given(orders)
def test_json_round_trip(order: Order) -> None:
    assert json_decode(json_encode(order), Order) == order


@given(orders)
def test_msgpack_round_trip(order: Order) -> None:
    assert msgpack_decode(msgpack_encode(order), Order) == order


@given(orders)
def test_from_builtins_round_trip(order: Order) -> None:
    assert from_builtins(msgspec.to_builtins(order), Order) == order


def test_json_is_compact_utf8_bytes() -> None:
    data = json_encode(Order(id="ö", items=[Item(sku="a", qty=1)]))
    assert isinstance(data, bytes)
    assert data == '{"id":"ö","items":[{"sku":"a","qty":1}],"tags":{},"note":null}'.encode()


def test_json_decode_accepts_text() -> None:
    assert json_decode('{"sku": "a", "qty": 2}', Item) == Item(sku="a", qty=2)


@pytest.mark.parametrize(("encode", "decode"), ENCODINGS)
def test_untyped_decode_gives_builtins(encode: Any, decode: Any) -> None:
    value = {"a": [1, 2.5, "x", None, True], "b": {}}
    assert decode(encode(value)) == value


def test_dataclasses_and_pydantic_models_encode() -> None:
    assert json_decode(json_encode(Point(1.0, 2.5))) == {"x": 1.0, "y": 2.5}
    reading = Reading(device="bat-1", at=dt.date(2024, 5, 1))
    assert json_decode(json_encode(reading)) == {"device": "bat-1", "at": "2024-05-01"}
    assert msgpack_decode(msgpack_encode(reading)) == {"device": "bat-1", "at": "2024-05-01"}


@pytest.mark.parametrize("encode", [json_encode, msgpack_encode])
def test_unsupported_objects_raise_type_error(encode: Any) -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match="cannot serialize objects of type Opaque"):
        encode(Opaque())


def test_invalid_input_is_a_usage_error() -> None:
    assert issubclass(InvalidInput, UsageError)


def decode_error(decode: Any, encode: Any, value: object, tp: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        decode(encode(value), tp)
    return info.value


@pytest.mark.parametrize(("encode", "decode"), ENCODINGS)
@pytest.mark.parametrize(
    ("value", "loc", "msg"),
    [
        ({"id": 1, "items": []}, ["id"], "Expected `str`, got `int`"),
        ({"items": []}, ["id"], "missing required field `id`"),
        ({"id": "o", "items": {}}, ["items"], "Expected `array`, got `object`"),
        (
            {"id": "o", "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "2"}]},
            ["items", "1", "qty"],
            "Expected `int`, got `str`",
        ),
        ({"id": "o", "items": [{"qty": 1}]}, ["items", "0", "sku"], "missing required field"),
        (
            {"id": "o", "items": [{"sku": "a", "qty": 1, "colour": "red"}]},
            ["items", "0", "colour"],
            "unknown field `colour`",
        ),
        ({"id": "o", "items": [], "tags": {"a": "b"}}, ["tags"], "Expected `int`, got `str`"),
        ([1, 2], [], "Expected `object`, got `array`"),
    ],
)
def test_validation_errors_name_the_field(
    encode: Any, decode: Any, value: object, loc: list[str], msg: str
) -> None:
    err = decode_error(decode, encode, value, Order)
    assert err.errors == [{"loc": loc, "msg": str(err)}]
    assert msg in str(err)


@pytest.mark.parametrize(
    ("value", "loc"),
    [
        ({"items": []}, ["id"]),
        ({"id": "o", "items": [{"sku": 1, "qty": 1}]}, ["items", "0", "sku"]),
    ],
)
def test_from_builtins_errors_name_the_field(value: object, loc: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        from_builtins(value, Order)
    assert info.value.errors[0]["loc"] == loc


def test_from_builtins_is_strict_unless_asked() -> None:
    with pytest.raises(InvalidInput) as info:
        from_builtins({"sku": "a", "qty": "3"}, Item)
    assert info.value.errors[0]["loc"] == ["qty"]
    assert from_builtins({"sku": "a", "qty": "3"}, Item, strict=False) == Item(sku="a", qty=3)


@pytest.mark.parametrize("data", [b'{"id": ', b"{'id': 1}", b"", b"nope", '{"a": 1,}'])
def test_malformed_json(data: bytes | str) -> None:
    with pytest.raises(InvalidInput, match="malformed JSON") as info:
        json_decode(data)
    assert info.value.errors == [{"loc": [], "msg": str(info.value)}]
    with pytest.raises(InvalidInput, match="malformed JSON"):
        json_decode(data, Order)


@pytest.mark.parametrize("data", [b"", b"\xc1", msgpack_encode({"id": "x"})[:-1]])
def test_malformed_msgpack(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="malformed msgpack") as info:
        msgpack_decode(data)
    assert info.value.errors == [{"loc": [], "msg": str(info.value)}]


def test_invalid_input_errors_are_json_ready() -> None:
    with pytest.raises(InvalidInput) as info:
        json_decode(b'{"id": "o", "items": [{"sku": "a"}]}', Order)
    body = json_decode(json_encode({"errors": info.value.errors}))
    assert body == {"errors": [{"loc": ["items", "0", "qty"], "msg": str(info.value)}]}
