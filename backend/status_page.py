"""``GET /status`` for a browser: the same data as the JSON (active_learning/status.py) as one HTML page.

Corrections get annotator effort beside the box counts (true objects, edits per object, time saved against
drawing every box; active_learning/reports/corrections.py), the time saved green when our boxes save time and
red when correcting them costs more than drawing from scratch.

Each training round gets a small inline SVG of its validation mAP per epoch against the deployed model's
(the baseline it had to beat): no JavaScript, no extra route, no image files. Jinja2 escapes every value,
so project titles, class names and error messages from users render as text.
"""

from __future__ import annotations

import math
from typing import Any

from flask import render_template

from active_learning.settings import Settings

CHART_WIDTH, CHART_HEIGHT = 320, 130
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 40, 10, 10, 26
DECISIONS = {"succeeded": "promoted", "rejected": "rejected", "failed": "failed", "running": "running",
             "queued": "queued"}
"""Training run status -> what it meant for serving ("succeeded" means the candidate was promoted)."""


def render_status_page(status: dict[str, Any], settings: Settings) -> str:
    projects = [{**project, "runs": [_run_view(run) for run in project["training_runs"]],
                 "effort": [_effort_view(c) for c in project["corrections"].values()]}
                for project in status["projects"]]
    return render_template("status.html", projects=projects, settings=settings, costs=status.get("action_costs"))


def _run_view(run: dict[str, Any]) -> dict[str, Any]:
    return {**run, "decision": DECISIONS.get(run["status"], run["status"]),
            "chart": map_chart(run["epochs"], (run["baseline"] or {}).get("map"), run["best_epoch"])}


def _effort_view(corrections: dict[str, Any]) -> dict[str, Any]:
    """A version's correction row with its effort formatted: "-" where a figure is unknown (no true objects)."""
    saved = corrections.get("time_saved")
    per_object = corrections.get("edits_per_object")
    seconds = corrections.get("seconds_with_predictions"), corrections.get("seconds_from_scratch")
    return {**corrections,
            "time_saved_text": "-" if saved is None else f"{saved:.0%}",
            "time_saved_class": "" if saved is None else ("saves" if saved > 0 else "costs" if saved < 0 else ""),
            "edits_per_object_text": "-" if per_object is None else f"{per_object:.2f}",
            "seconds_text": "" if seconds[0] is None else
            f"{seconds[0]:g} s with our boxes, {seconds[1]:g} s drawing every box"}


def map_chart(epochs: list[dict[str, Any]], baseline: float | None, best_epoch: int | None) -> dict[str, Any] | None:
    """Pixel geometry of a validation mAP curve (x: epoch, y: mAP from 0) for the template; None without epochs."""
    maps = [e["map"] for e in epochs if e.get("map") is not None]
    if not maps:
        return None
    top = _nice_ceiling(max([*maps, baseline or 0.0]))
    inner_w = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    inner_h = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def x(epoch: int) -> float:
        return MARGIN_LEFT + (inner_w * (epoch - 1) / (len(maps) - 1) if len(maps) > 1 else inner_w / 2)

    def y(value: float) -> float:
        return MARGIN_TOP + inner_h * (1 - value / top)

    points = [(round(x(i), 1), round(y(m), 1)) for i, m in enumerate(maps, 1)]
    return {
        "width": CHART_WIDTH, "height": CHART_HEIGHT, "left": MARGIN_LEFT, "right": CHART_WIDTH - MARGIN_RIGHT,
        "top": MARGIN_TOP, "bottom": CHART_HEIGHT - MARGIN_BOTTOM,
        "line": " ".join(f"{px},{py}" for px, py in points), "points": points,
        "best": points[best_epoch - 1] if best_epoch and best_epoch <= len(points) else None,
        "baseline_y": round(y(baseline), 1) if baseline is not None else None,
        "y_ticks": [(round(y(v), 1), f"{v:g}") for v in (0.0, top / 2, top)],
        "x_ticks": [(px, i) for i, (px, _) in enumerate(points, 1) if len(points) <= 12 or i % 5 == 0 or i == 1],
    }


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5, 10 x 10^k at or above ``value`` (0.01 for 0): round numbers on the axis."""
    if value <= 0:
        return 0.01
    power = 10 ** math.floor(math.log10(value))
    return next(round(step * power, 10) for step in (1, 2, 5, 10) if step * power >= value)
