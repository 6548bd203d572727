"""What `make demo` shows once every service is up: traffic across the fleet and its edges.

`garrison demo` calls :func:`main` with the application's configuration.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict

import httpx
from rich.console import Console
from rich.table import Table

from garrison.core import GarrisonConfig

console = Console()
_SAMPLE = re.compile(r"^(\w+)\{(.*)\} ([0-9.e+-]+)$")


def _edges(text: str) -> dict[tuple[str, str], dict[str, float]]:
    """Per (caller, callee): calls, errors and mean latency from one service's /metrics."""
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = (
            m.group(1),
            dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))),
            float(m.group(3)),
        )
        if "caller" not in labels:
            continue
        edge = out[(labels["caller"], labels["callee"])]
        if name == "garrison_edge_requests_total":
            edge["calls"] += value
            if labels["outcome"] != "ok":
                edge["errors"] += value
        elif name == "garrison_edge_request_seconds_sum":
            edge["seconds"] += value
    return out


async def main(config: GarrisonConfig) -> None:
    """Drive a little traffic through the fleet and print what each edge saw."""
    url = {name: svc.urls()[0] for name, svc in config.services.items()}
    async with httpx.AsyncClient(timeout=10) as http:
        sites = (await http.get(f"{url['sites']}/sites")).json()
        table = Table(title="sites (GET /sites/{site}: fan-out to every device)")
        for col in (
            "site",
            "devices",
            "power kW",
            "mean SoC %",
            "good",
            "uncertain",
            "unreachable",
        ):
            table.add_column(col)
        for site in sites:
            v = (await http.get(f"{url['sites']}/sites/{site}")).json()
            table.add_row(
                site,
                str(v["devices"]),
                f"{v['power_kw']:.1f}",
                str(v["mean_soc"]),
                str(v["good"]),
                str(v["uncertain"]),
                str(v["unreachable"]),
            )
        console.print(table)

        report = (
            await http.post(f"{url['dispatch']}/dispatch", json={"site": "north", "kw": 150})
        ).json()
        console.print(
            f"dispatch north 150 kW -> commanded {report['commanded_kw']} kW "
            f"on {len(report['acks'])} batteries, failed: {report['failed'] or 'none'}"
        )
        bad = await http.post(f"{url['dispatch']}/dispatch", json={"site": "north", "kw": "lots"})
        console.print(f"bad input is refused with {bad.status_code}: {bad.json()['message']}")

        console.print("sending 300 site views and 60 dispatches ...")
        for i in range(30):
            await asyncio.gather(
                *(
                    http.get(f"{url['sites']}/sites/{sites[(i + k) % len(sites)]}")
                    for k in range(10)
                ),
                *(
                    http.post(f"{url['dispatch']}/dispatch", json={"site": s, "kw": 40})
                    for s in sites[:2]
                ),
            )

        edges: dict[tuple[str, str], dict[str, float]] = {}
        for name in config.services:
            text = (await http.get(f"{url[name]}/metrics")).text
            edges.update(_edges(text))
        table = Table(title="service-to-service edges (from each caller's /metrics)")
        for col in ("caller -> callee", "calls", "errors", "mean latency ms"):
            table.add_column(col)
        for (caller, callee), e in sorted(edges.items()):
            mean = 1000 * e["seconds"] / e["calls"] if e["calls"] else 0.0
            table.add_row(
                f"{caller} -> {callee}", f"{e['calls']:.0f}", f"{e['errors']:.0f}", f"{mean:.2f}"
            )
        console.print(table)

        # Resilience is live: read dispatch's pipelines, then tighten its edge to devices.
        state = (await http.get(f"{url['dispatch']}/_garrison/resilience")).json()
        table = Table(title="dispatch's resilience pipelines (GET /_garrison/resilience)")
        for col in ("edge", "version", "calls", "attempts", "breaker", "bulkhead"):
            table.add_column(col)
        for p in state["pipelines"]:
            table.add_row(
                p["name"],
                str(p["version"]),
                str(p["calls"]),
                str(p["attempts"]),
                p.get("breaker", {}).get("state", "-"),
                str(p.get("bulkhead", {}).get("active", "-")),
            )
        console.print(table)
        replaced = await http.put(
            f"{url['dispatch']}/_garrison/resilience/edges/devices",
            json={"bulkhead": {"max_concurrent_calls": 4, "max_queue": 32}},
        )
        console.print(
            f"PUT /_garrison/resilience/edges/devices -> {replaced.status_code}: "
            f"edge {replaced.json()['edge']} now at version {replaced.json()['version']}"
        )
        await http.delete(f"{url['dispatch']}/_garrison/resilience/edges/devices")
