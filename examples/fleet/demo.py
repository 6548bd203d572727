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

        # Dispatch is a durable workflow: start it, end the grid event, read its report.
        d = url["dispatch"]
        started = (await http.post(f"{d}/dispatch", json={"site": "north", "kw": 150})).json()
        # (an event sent before the workflow waits for it is kept for that wait)
        await http.post(f"{d}/dispatch/{started['id']}/grid-event-over")
        status = (await http.get(f"{d}/dispatch/{started['id']}", params={"wait": 30})).json()
        report = status["report"]
        console.print(
            f"dispatch north 150 kW -> commanded {report['commanded_kw']} kW "
            f"on {len(report['acks'])} batteries, failed: {report['failed'] or 'none'} "
            f"(workflow {started['id']}: {status['status']}, ended by {report['ended_by']}, "
            f"{report['released']} released)"
        )
        bad = await http.post(f"{d}/dispatch", json={"site": "north", "kw": "lots"})
        console.print(f"bad input is refused with {bad.status_code}: {bad.json()['message']}")

        # An operator cancels a holding dispatch: its saga sets every battery back to 0 kW.
        # (cancelled at once here: where it waits, commands or hold, it compensates)
        held = (
            await http.post(f"{d}/dispatch", json={"site": "harbour", "kw": 80, "hold_s": 600})
        ).json()
        await http.post(f"{d}/_garrison/workflows/{held['id']}/cancel", json={"reason": "demo"})
        status = (await http.get(f"{d}/dispatch/{held['id']}", params={"wait": 30})).json()
        history = (await http.get(f"{d}/_garrison/workflows/{held['id']}/history")).json()
        releases = sum(
            1
            for b in history["batches"]
            for i in b["inputs"]
            if i["kind"] == "ActivityCompleted" and i["name"].endswith("release")
        )
        console.print(
            f"dispatch harbour cancelled by an operator -> {status['status']}; "
            f"the saga released {releases} batteries"
        )

        console.print("sending 300 site views and 60 dispatches ...")
        for i in range(30):
            await asyncio.gather(
                *(
                    http.get(f"{url['sites']}/sites/{sites[(i + k) % len(sites)]}")
                    for k in range(10)
                ),
                *(
                    http.post(f"{d}/dispatch", json={"site": s, "kw": 40, "hold_s": 0.5})
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

        # The dispatch workflows, as an operator sees them.
        listing = (await http.get(f"{d}/_garrison/workflows", params={"limit": 5})).json()
        table = Table(title="dispatch's workflows (GET /_garrison/workflows?limit=5)")
        for col in ("id", "workflow", "status", "steps", "failure"):
            table.add_column(col)
        for w in listing["workflows"]:
            table.add_row(w["id"], w["workflow"], w["status"], str(w["steps"]), w["failure"] or "")
        console.print(table)
        console.print(
            f"workflows: GET {d}/_garrison/workflows[/ID[/history]], or "
            f"`garrison workflows list --service dispatch --app-dir {config.root}` "
            "(also show, history, signal, cancel, replay-check)",
            markup=False,
        )
