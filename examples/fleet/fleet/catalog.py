"""The fleet's devices: a fixed catalogue generated from a seed, so every replica agrees."""

from __future__ import annotations

import random

from .models import Device

SITES = ("north", "harbour", "valley")


def _build() -> dict[str, Device]:
    rng = random.Random(7)
    devices: dict[str, Device] = {}
    for site in SITES:
        for i in range(6):
            kind = ("battery", "solar", "charger")[i % 3]
            dev = Device(
                f"{site}-{kind[:3]}-{i}",
                site,
                kind,
                round(rng.uniform(20, 200), 1),  # type: ignore[arg-type]
            )
            devices[dev.id] = dev
    return devices


DEVICES: dict[str, Device] = _build()


def devices_at(site: str) -> list[Device]:
    """The devices of ``site``, in a stable order."""
    return [d for d in DEVICES.values() if d.site == site]
