"""docs/resilience.md documents every field of every policy, with its current default."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_parameter_tables_are_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location(
        "policy_tables", ROOT / "scripts" / "policy_tables.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = (ROOT / "docs" / "resilience.md").read_text(encoding="utf-8")
    assert module.tables() in doc, "run: python scripts/policy_tables.py --write"
