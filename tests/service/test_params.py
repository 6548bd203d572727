"""Handler signatures: classified at decoration time, decoded per request with clear 4xx errors."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import msgspec
import pydantic
import pytest
from starlette.requests import Request

from garrison.service import Body, Header, Service
from garrison.service._params import analyse


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Point(msgspec.Struct):
    x: int
    y: int


class Item(msgspec.Struct):
    name: str
    qty: int
    at: Point | None = None


@dataclasses.dataclass
class Note:
    text: str
    pinned: bool = False


class Model(pydantic.BaseModel):
    title: str
    score: float


class Session:
    """A type handlers receive through ``Service.inject``."""

    def __init__(self, user: str) -> None:
        self.user = user


async def call(svc: Service, method: str, url: str, **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=svc.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.request(method, url, **kw)


def locs(r: httpx.Response) -> list[list[str]]:
    """The ``loc`` of every problem in a 422 body."""
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_input"
    return [d["loc"] for d in body["detail"]]


# -- classification --------------------------------------------------------------------------


def kinds(fn: Callable[..., Any], path: set[str] | None = None) -> dict[str, str]:
    async def make_session(request: Request) -> Session:
        return Session("u")

    specs = analyse(fn, path or set(), {Session: make_session})
    return {s.name: s.kind for s in specs}


def test_each_parameter_is_classified_by_name_and_annotation() -> None:
    async def handler(
        site: str,
        request: Request,
        session: Session,
        item: Item,
        limit: int,
        tags: list[str],
        rid: Annotated[str, Header("X-Request-Id")],
        untyped,  # type: ignore[no-untyped-def]
    ) -> None: ...

    assert kinds(handler, {"site"}) == {
        "site": "path",
        "request": "request",
        "session": "inject",
        "item": "body",
        "limit": "query",
        "tags": "query",
        "rid": "header",
        "untyped": "query",
    }


@pytest.mark.parametrize("tp", [Item, Note, Model, dict, dict[str, int], Item | None])
def test_structured_types_are_the_body(tp: Any) -> None:
    async def handler(payload: Any) -> None: ...

    handler.__annotations__["payload"] = tp  # a local type: set it as the value it names
    assert kinds(handler) == {"payload": "body"}


def test_body_marker_makes_a_plain_type_the_body() -> None:
    async def handler(ids: Annotated[list[int], Body()]) -> None: ...

    assert kinds(handler) == {"ids": "body"}


def test_header_names_are_case_insensitive() -> None:
    async def handler(rid: Annotated[str, Header("X-Request-Id")]) -> None: ...

    (spec,) = analyse(handler, set(), {})
    assert spec.source == "x-request-id"


# -- signatures that cannot work fail at decoration time -------------------------------------


def test_two_bodies_are_rejected() -> None:
    svc = Service("params")
    with pytest.raises(TypeError, match="more than one body"):

        @svc.post("/x")
        async def handler(a: Item, b: Note) -> None: ...


def test_var_positional_and_var_keyword_are_rejected() -> None:
    svc = Service("params")
    with pytest.raises(TypeError, match=r"\*args"):

        @svc.get("/a")
        async def a(*args: int) -> None: ...

    with pytest.raises(TypeError, match=r"\*\*kwargs"):

        @svc.get("/b")
        async def b(**kwargs: int) -> None: ...


def test_positional_only_parameters_are_rejected() -> None:
    svc = Service("params")
    with pytest.raises(TypeError, match="positional-only"):

        @svc.get("/a")
        async def a(limit: int, /) -> None: ...


def test_a_path_parameter_without_an_argument_is_rejected() -> None:
    svc = Service("params")
    with pytest.raises(TypeError, match=r"\['site'\]"):

        @svc.get("/sites/{site}")
        async def handler() -> None: ...


def test_an_unresolvable_annotation_is_rejected() -> None:
    svc = Service("params")
    with pytest.raises(TypeError, match="cannot resolve annotation"):

        @svc.get("/a")
        async def handler(x: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821


def test_an_unsupported_parameter_type_is_rejected() -> None:
    svc = Service("params")
    with pytest.raises(TypeError, match="'when'"):

        @svc.get("/a")
        async def handler(when: Callable[[], int]) -> None: ...


def test_no_routes_are_registered_by_a_failed_decoration() -> None:
    svc = Service("params")
    with pytest.raises(TypeError):

        @svc.post("/x")
        async def handler(a: Item, b: Note) -> None: ...

    assert svc.routes == []


# -- path, query and header values -----------------------------------------------------------


@pytest.fixture
def svc() -> Service:
    svc = Service("params")

    @svc.get("/items/{item_id}")
    async def get_item(
        item_id: int,
        limit: int = 10,
        ratio: float = 1.0,
        verbose: bool = False,
        color: Color = Color.RED,
        level: Level = Level.LOW,
        tags: list[str] | None = None,
        ids: list[int] | None = None,
        cursor: int | None = None,
    ) -> dict[str, Any]:
        return {
            "item_id": item_id,
            "limit": limit,
            "ratio": ratio,
            "verbose": verbose,
            "color": color,
            "level": level,
            "tags": tags,
            "ids": ids,
            "cursor": cursor,
        }

    @svc.get("/required")
    async def required(q: str, n: int) -> dict[str, Any]:
        return {"q": q, "n": n}

    @svc.get("/headers")
    async def headers(
        rid: Annotated[str, Header("x-request-id")],
        count: Annotated[int, Header("x-count")] = 1,
    ) -> dict[str, Any]:
        return {"rid": rid, "count": count}

    return svc


async def test_defaults_apply_when_parameters_are_absent(svc: Service) -> None:
    r = await call(svc, "GET", "/items/7")
    assert r.status_code == 200
    assert r.json() == {
        "item_id": 7,
        "limit": 10,
        "ratio": 1.0,
        "verbose": False,
        "color": "red",
        "level": 1,
        "tags": None,
        "ids": None,
        "cursor": None,
    }


async def test_query_values_are_converted_to_their_types(svc: Service) -> None:
    r = await call(
        svc,
        "GET",
        "/items/7?limit=3&ratio=0.5&verbose=true&color=blue&level=2"
        "&tags=a&tags=b&ids=1&ids=2&cursor=9",
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "item_id": 7,
        "limit": 3,
        "ratio": 0.5,
        "verbose": True,
        "color": "blue",
        "level": 2,
        "tags": ["a", "b"],
        "ids": [1, 2],
        "cursor": 9,
    }


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=many", "limit"),
        ("ratio=x", "ratio"),
        ("verbose=perhaps", "verbose"),
        ("color=green", "color"),
        ("level=3", "level"),
        ("ids=1&ids=two", "ids"),
        ("cursor=", "cursor"),
    ],
)
async def test_a_wrong_query_value_is_a_422_naming_it(svc: Service, query: str, field: str) -> None:
    r = await call(svc, "GET", f"/items/7?{query}")
    assert locs(r) == [["query", field]]
    assert field in r.json()["message"]


async def test_a_wrong_path_value_is_a_422_naming_it(svc: Service) -> None:
    assert locs(await call(svc, "GET", "/items/seven")) == [["path", "item_id"]]


async def test_every_missing_required_parameter_is_named(svc: Service) -> None:
    r = await call(svc, "GET", "/required")
    assert locs(r) == [["query", "q"], ["query", "n"]]
    assert [d["msg"] for d in r.json()["detail"]] == ["required", "required"]


async def test_headers_are_read_and_converted(svc: Service) -> None:
    r = await call(svc, "GET", "/headers", headers={"X-Request-Id": "abc", "X-Count": "4"})
    assert r.json() == {"rid": "abc", "count": 4}
    r = await call(svc, "GET", "/headers", headers={"x-request-id": "abc"})
    assert r.json() == {"rid": "abc", "count": 1}


async def test_a_missing_or_wrong_header_is_a_422_naming_it(svc: Service) -> None:
    assert locs(await call(svc, "GET", "/headers")) == [["header", "x-request-id"]]
    r = await call(svc, "GET", "/headers", headers={"x-request-id": "a", "x-count": "lots"})
    assert locs(r) == [["header", "x-count"]]


async def test_a_starlette_path_convertor_is_honoured() -> None:
    svc = Service("params")

    @svc.get("/n/{n:int}")
    async def handler(n: int) -> int:
        return n * 2

    assert (await call(svc, "GET", "/n/21")).json() == 42
    assert (await call(svc, "GET", "/n/x")).status_code == 404


# -- bodies ----------------------------------------------------------------------------------


@pytest.fixture
def bodies() -> Service:
    svc = Service("bodies")

    @svc.post("/struct")
    async def struct(item: Item) -> Item:
        return item

    @svc.post("/dataclass")
    async def dataclass(note: Note) -> Note:
        return note

    @svc.post("/pydantic")
    async def model(m: Model) -> Model:
        return m

    @svc.post("/dict")
    async def plain(data: dict[str, int]) -> dict[str, int]:
        return {k: v + 1 for k, v in data.items()}

    @svc.post("/list")
    async def listed(ids: Annotated[list[int], Body()]) -> int:
        return sum(ids)

    @svc.post("/optional")
    async def optional(item: Item | None = None) -> dict[str, Any]:
        return {"item": item}

    return svc


@pytest.mark.parametrize(
    ("path", "sent", "answer"),
    [
        ("/struct", {"name": "a", "qty": 2}, {"name": "a", "qty": 2, "at": None}),
        ("/struct", {"name": "a", "qty": 2, "at": {"x": 1, "y": 2}}, None),
        ("/dataclass", {"text": "hi", "pinned": True}, None),
        ("/pydantic", {"title": "t", "score": 1.5}, None),
        ("/dict", {"a": 1, "b": 2}, {"a": 2, "b": 3}),
        ("/list", [1, 2, 3], 6),
        ("/optional", {"name": "a", "qty": 1}, {"item": {"name": "a", "qty": 1, "at": None}}),
    ],
)
async def test_bodies_are_decoded_to_their_types(
    bodies: Service, path: str, sent: Any, answer: Any
) -> None:
    r = await call(bodies, "POST", path, json=sent)
    assert r.status_code == 200, r.text
    assert r.json() == (sent if answer is None else answer)


async def test_an_optional_body_may_be_omitted(bodies: Service) -> None:
    r = await call(bodies, "POST", "/optional")
    assert r.json() == {"item": None}


@pytest.mark.parametrize(
    ("path", "sent", "loc"),
    [
        ("/struct", {"name": "a", "qty": "two"}, ["body", "qty"]),
        ("/struct", {"qty": 1}, ["body", "name"]),
        ("/struct", {"name": "a", "qty": 1, "at": {"x": 1}}, ["body", "at", "y"]),
        ("/struct", {"name": "a", "qty": 1, "at": {"x": "1", "y": 2}}, ["body", "at", "x"]),
        ("/struct", [1], ["body"]),
        ("/dataclass", {"text": 5}, ["body", "text"]),
        ("/pydantic", {"title": "t", "score": "high"}, ["body", "score"]),
        ("/pydantic", {"score": 1}, ["body", "title"]),
        ("/dict", {"a": "x"}, ["body"]),  # msgspec does not name the key of a dict
        ("/list", [1, "x"], ["body", "1"]),
    ],
)
async def test_a_wrong_body_is_a_422_naming_the_field(
    bodies: Service, path: str, sent: Any, loc: list[str]
) -> None:
    assert locs(await call(bodies, "POST", path, json=sent)) == [loc]


@pytest.mark.parametrize("path", ["/struct", "/dataclass", "/pydantic", "/dict", "/list"])
async def test_malformed_json_is_a_422_naming_the_body(bodies: Service, path: str) -> None:
    r = await call(bodies, "POST", path, content=b'{"name": ')
    assert locs(r) == [["body"]]


@pytest.mark.parametrize("path", ["/struct", "/dataclass", "/pydantic", "/dict", "/list"])
async def test_an_empty_body_is_a_422_naming_the_body(bodies: Service, path: str) -> None:
    assert locs(await call(bodies, "POST", path)) == [["body"]]


async def test_errors_of_query_and_body_are_reported_together() -> None:
    svc = Service("params")

    @svc.post("/x")
    async def handler(item: Item, limit: int) -> None: ...

    r = await call(svc, "POST", "/x?limit=z", json={"name": "a"})
    assert locs(r) == [["body", "qty"], ["query", "limit"]]


# -- injected values -------------------------------------------------------------------------


async def test_injected_parameters_are_built_per_request() -> None:
    svc = Service("params")
    built: list[str] = []

    async def session(request: Request) -> Session:
        user = request.headers.get("x-user", "anonymous")
        built.append(user)
        return Session(user)

    svc.inject(Session, session)

    @svc.get("/me")
    async def me(s: Session) -> str:
        return s.user

    assert (await call(svc, "GET", "/me", headers={"x-user": "ada"})).json() == "ada"
    assert (await call(svc, "GET", "/me")).json() == "anonymous"
    assert built == ["ada", "anonymous"]


async def test_an_optional_injected_parameter_uses_the_same_factory() -> None:
    svc = Service("params")

    async def session(request: Request) -> Session | None:
        user = request.headers.get("x-user")
        return None if user is None else Session(user)

    svc.inject(Session, session)

    @svc.get("/me")
    async def me(s: Session | None = None) -> str | None:
        return None if s is None else s.user

    assert (await call(svc, "GET", "/me", headers={"x-user": "ada"})).json() == "ada"
    assert (await call(svc, "GET", "/me")).status_code == 204


async def test_an_injector_can_reject_the_request() -> None:
    from garrison.core import InvalidInput

    svc = Service("params")

    async def session(request: Request) -> Session:
        raise InvalidInput("no session", [{"loc": ["header", "cookie"], "msg": "missing"}])

    svc.inject(Session, session)

    @svc.get("/me")
    async def me(s: Session) -> str:
        return s.user

    assert locs(await call(svc, "GET", "/me")) == [["header", "cookie"]]


async def test_the_request_itself_can_be_taken() -> None:
    svc = Service("params")

    @svc.get("/echo")
    async def echo(request: Request) -> str:
        return request.url.path

    assert (await call(svc, "GET", "/echo")).json() == "/echo"
