"""The live pipelines of one process, replaceable while it runs.

A :class:`PolicyRegistry` hands out the :class:`Pipeline` of each edge (and route) and of each
service's door, built on first use from :class:`ResilienceSettings`. An operator (the control
plane, a test) replaces an edge's policies with :meth:`PolicyRegistry.replace`: the new pipeline
is built and validated first, then swapped in with one assignment, so a call either runs wholly
on the old pipeline or wholly on the new one — calls in flight finish under the version they
started with — and a bad replacement is refused without touching what runs.

State (breaker windows, limits) is not carried over to a replacement: a new configuration starts
from a clean slate, which is what an operator changing a policy expects.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from garrison.core import Clock

from ._base import Listener, PolicyEvent, emit
from ._pipeline import Pipeline, PolicyConfig
from ._settings import ResilienceSettings, _validate_layer, edge_key, parse_policy

__all__ = ["PolicyRegistry"]

_Key = tuple[str, str, str | None]


class PolicyRegistry:
    """Pipelines per (caller, callee, route) and per service door; live-replaceable."""

    def __init__(
        self, settings: ResilienceSettings | None = None, *, clock: Clock | None = None
    ) -> None:
        self.settings = settings or ResilienceSettings()
        self._clock = clock
        self._pipelines: dict[_Key, Pipeline] = {}
        self._inbound: dict[str, Pipeline] = {}
        self._overrides: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, int] = {}
        self._listeners: list[Listener] = []

    # -- lookups (hot path: one dict lookup once built) ----------------------------------------

    def pipeline(self, caller: str, callee: str, route: str | None = None) -> Pipeline:
        """The pipeline of a call; route-specific only when that route has its own policies."""
        p = self._pipelines.get((caller, callee, route))
        if p is None:
            if route is not None and not self.settings.has_route_policies(caller, callee, route):
                # Not cached per route: raw paths would grow the cache without bound.
                return self.pipeline(caller, callee)
            p = self._build(caller, callee, route)
        return p

    def inbound(self, service: str) -> Pipeline:
        """The pipeline at the door of ``service``."""
        p = self._inbound.get(service)
        if p is None:
            p = self._inbound[service] = Pipeline(
                self.settings.inbound_policy(service),
                name=f"->{service}",
                clock=self._clock,
            )
            self._attach(p)
        return p

    def _build(self, caller: str, callee: str, route: str | None) -> Pipeline:
        edge = edge_key(caller, callee)
        layers = self.settings.layers(caller, callee, route)
        if edge in self._overrides:
            layers.append((f"override {edge}", self._overrides[edge]))
        p = Pipeline(
            parse_policy(layers),
            name=edge if route is None else f"{edge} {route}",
            version=self._versions.get(edge, 1),
            clock=self._clock,
        )
        self._attach(p)
        self._pipelines[(caller, callee, route)] = p
        return p

    def _attach(self, p: Pipeline) -> None:
        for listener in self._listeners:
            p.add_listener(listener)

    # -- live changes --------------------------------------------------------------------------

    def reload(self, settings: ResilienceSettings) -> None:
        """Use new settings (a new garrison.toml): every pipeline is rebuilt on next use.

        Operator overrides made with :meth:`replace` stay on top of the new settings.
        """
        self.settings = settings
        for edge in {edge_key(caller, callee) for caller, callee, _ in self._pipelines}:
            self._versions[edge] = self._versions.get(edge, 1) + 1  # once per edge
        self._pipelines = {}
        self._inbound = {}

    def replace(self, caller: str, callee: str, policies: Mapping[str, Any]) -> int:
        """Replace the operator override of an edge with ``policies`` (a table as in
        garrison.toml; ``false`` switches an inherited policy off; ``{}`` clears the override).

        Validates and builds first; on success swaps every pipeline of the edge at once and
        returns the edge's new version. Raises :class:`ConfigError` and changes nothing when
        ``policies`` is invalid.
        """
        edge = edge_key(caller, callee)
        layer = _validate_layer(dict(policies), f"override {edge}", None)
        version = self._versions.get(edge, 1) + 1
        # Build the replacements before touching anything, so that a bad combination fails here.
        routes: set[str | None] = {None}
        for key in (f"*->{callee}", f"{caller}->*", edge):
            routes.update(self.settings.routes.get(key, {}))
        fresh: dict[_Key, Pipeline] = {}
        for route in sorted(routes, key=lambda r: (r is not None, r or "")):
            layers = self.settings.layers(caller, callee, route)
            if layer:
                layers.append((f"override {edge}", layer))
            p = Pipeline(
                parse_policy(layers),
                name=edge if route is None else f"{edge} {route}",
                version=version,
                clock=self._clock,
            )
            self._attach(p)
            fresh[(caller, callee, route)] = p
        if layer:
            self._overrides[edge] = layer
        else:
            self._overrides.pop(edge, None)
        self._versions[edge] = version
        self._pipelines.update(fresh)  # the swap: later lookups see the new pipelines
        if self._listeners:
            now = self._clock.monotonic() if self._clock is not None else time.monotonic()
            emit(
                self._listeners,
                PolicyEvent("pipeline", edge, "replaced", now, {"version": version}),
            )
        return version

    def override(self, caller: str, callee: str) -> dict[str, Any]:
        """The operator override of an edge (empty when none)."""
        return dict(self._overrides.get(edge_key(caller, callee), {}))

    def version(self, caller: str, callee: str) -> int:
        """The current version of an edge's pipelines (1 until replaced)."""
        return self._versions.get(edge_key(caller, callee), 1)

    def effective(self, caller: str, callee: str, route: str | None = None) -> PolicyConfig:
        """The policies a call on this edge runs with now."""
        return self.pipeline(caller, callee, route).config

    def add_listener(self, listener: Listener) -> None:
        """Receive the events of every pipeline, present and future."""
        self._listeners.append(listener)
        seen: set[int] = set()
        for p in [*self._pipelines.values(), *self._inbound.values()]:
            if id(p) not in seen:
                seen.add(id(p))
                p.add_listener(listener)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every pipeline's state (see :meth:`Pipeline.snapshot`)."""
        seen: set[int] = set()
        out = []
        for p in [*self._pipelines.values(), *self._inbound.values()]:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p.snapshot())
        return out
