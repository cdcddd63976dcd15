"""The table printed, the JSON and the PNG written."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypedDict

#: A scenario's result: its "rows" (``Row``) and its figures, each
#: scenario's of a shape of its own, written to the JSON as they are (Any).
Figures = dict[str, Any]


class Row(TypedDict):
    """One line of the table (``bench.scenarios.row`` makes them)."""

    scenario: str
    metric: str
    asyncwsgi: float
    baseline: str
    baseline_value: float | None
    ratio: float | None
    target: float | None
    target_kind: str
    met: bool | None


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def table(rows: list[Row]) -> str:
    head = "| scenario | metric | asyncwsgi | baseline | baseline value | ratio | target | met |"
    lines = [head, "|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        target = "-" if r["target"] is None else f"{r['target_kind']} {r['target']:g}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(
            f"| {r['scenario']} | {r['metric']} | {_fmt(r['asyncwsgi'])} | {r['baseline']} "
            f"| {_fmt(r['baseline_value'])} | {ratio} | {target} | {_fmt(r['met'])} |"
        )
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """``document`` (values of any JSON type) as indented JSON."""
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def plot(path: Path, rows: list[Row], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    cols = 4
    lines = math.ceil(n / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(4 * cols, 3.2 * lines), squeeze=False)
    for ax, r in zip(axes.flat, rows, strict=False):
        values = [r["asyncwsgi"] or 0, r["baseline_value"] or 0]
        bars = ax.bar(["asyncwsgi", r["baseline"]], values, color=["tab:blue", "tab:gray"])
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=8)
        sub = f"{r['scenario']}\n{r['metric']}"
        if r["ratio"] is not None:
            sub += f"\nratio {r['ratio']:.3f}"
            if r["target"] is not None:
                sub += f" (target {r['target_kind']} {r['target']:g})"
        ax.set_title(sub, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.margins(y=0.2)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # room for the title
    fig.savefig(path, dpi=90)
    plt.close(fig)
