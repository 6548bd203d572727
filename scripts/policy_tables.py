"""Render the parameter tables of docs/resilience.md from the policy config structs.

``python scripts/policy_tables.py`` prints them; ``--write`` replaces the generated block of
docs/resilience.md. tests/resilience/test_docs.py fails when the doc is out of date, so a new
field or a changed default cannot go undocumented.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import sys
from pathlib import Path
from typing import Any

import msgspec

from garrison import resilience as r

POLICIES: list[tuple[str, type[msgspec.Struct]]] = [
    ("retry", r.RetryPolicy),
    ("retry_budget", r.RetryBudgetConfig),
    ("hedge", r.HedgeConfig),
    ("rate_limit", r.RateLimitConfig),
    ("throttle", r.ThrottleConfig),
    ("breaker", r.BreakerConfig),
    ("bulkhead", r.BulkheadConfig),
    ("limiter", r.LimiterConfig),
    ("outlier", r.OutlierConfig),
]
BEGIN = "<!-- BEGIN GENERATED: scripts/policy_tables.py -->"
END = "<!-- END GENERATED -->"
DOC = Path(__file__).resolve().parents[1] / "docs" / "resilience.md"


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a class and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for prev, node in itertools.pairwise(body):
            if (
                isinstance(prev, ast.AnnAssign)
                and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.default is not msgspec.NODEFAULT:
        value: Any = field.default
    elif field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, tuple) and all(isinstance(v, type) for v in value):
        return ", ".join(v.__name__ for v in value)
    if isinstance(value, frozenset):
        return ", ".join(str(v) for v in sorted(value))
    if isinstance(value, msgspec.Struct):
        return "see below" if not msgspec.structs.asdict(value) else "table"
    return f"`{value!r}`"


def tables() -> str:
    """The generated markdown block."""
    out = [BEGIN, ""]
    for name, cls in POLICIES:
        docs = _field_docs(cls)
        out.append(f"#### `{name}` ({cls.__name__})")
        out.append("")
        out.append("| field | default | meaning |")
        out.append("|---|---|---|")
        for f in msgspec.structs.fields(cls):
            doc = docs.get(f.name, "").replace("|", "\\|")
            out.append(f"| `{f.name}` | {_default(f)} | {doc} |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def main() -> int:
    """Print the tables, or rewrite the generated block of the doc with ``--write``."""
    block = tables()
    if "--write" not in sys.argv:
        print(block)
        return 0
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + block + text[end:], encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
