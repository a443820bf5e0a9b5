"""Online results per model: click-through and conversion with confidence intervals."""

from __future__ import annotations

import math
from typing import Any

import psycopg

Z95 = 1.959963984540054


def two_proportions(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float, float, float]:
    """Difference p1 - p2, its 95% confidence interval, and the two-sided p-value of a pooled z-test."""
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan, math.nan, math.nan
    p1, p2 = x1 / n1, x2 / n2
    diff = p1 - p2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    pooled = (x1 + x2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p_value = math.erfc(abs(diff / se0) / math.sqrt(2)) if se0 > 0 else (1.0 if diff == 0 else 0.0)
    return diff, diff - Z95 * se, diff + Z95 * se, p_value


def report(conn: psycopg.Connection[Any], *, days: int = 14) -> list[dict[str, Any]]:
    """One row per model that served lists in the window; candidates are compared with the active one."""
    active_row = conn.execute("SELECT name FROM recsql.models WHERE status = 'active'").fetchone()
    active = str(active_row["name"]) if active_row else None
    rows = conn.execute(
        "SELECT * FROM recsql.model_outcomes(now() - make_interval(days => %s)) ORDER BY model", (days,)
    ).fetchall()
    by_model = {r["model"]: r for r in rows}
    base = by_model.get(active)
    out = []
    for r in rows:
        n, clicked, converted = int(r["lists_served"]), int(r["lists_clicked"]), int(r["lists_converted"])
        entry: dict[str, Any] = {
            "model": r["model"],
            "active": r["model"] == active,
            "lists": n,
            "ctr": clicked / n if n else math.nan,
            "conversion": converted / n if n else math.nan,
            "revenue": float(r["revenue"]),
            "revenue_per_list": float(r["revenue"]) / n if n else math.nan,
        }
        if base is not None and r["model"] != active:
            bn = int(base["lists_served"])
            for name, x, bx in (
                ("ctr", clicked, int(base["lists_clicked"])),
                ("conversion", converted, int(base["lists_converted"])),
            ):
                diff, low, high, p = two_proportions(x, n, bx, bn)
                entry[f"{name}_diff"] = diff
                entry[f"{name}_ci95"] = f"[{low:+.4f}, {high:+.4f}]"
                entry[f"{name}_p"] = p
        out.append(entry)
    return out
