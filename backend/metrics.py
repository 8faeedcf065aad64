"""Counters behind ``GET /metrics``: enough to see whether pre-annotation keeps up, without a metrics stack.

They live in the process: under gunicorn each worker counts its own requests.
"""

from __future__ import annotations

import threading
from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._latency_total: dict[str, float] = {}
        self._latency_max: dict[str, float] = {}

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def observe(self, route: str, seconds: float) -> None:
        """One request to ``route`` took ``seconds``."""
        with self._lock:
            self._counts[f"requests.{route}"] += 1
            self._latency_total[route] = self._latency_total.get(route, 0.0) + seconds
            self._latency_max[route] = max(self._latency_max.get(route, 0.0), seconds)

    def snapshot(self) -> dict:
        with self._lock:
            requests = {k.split(".", 1)[1]: v for k, v in self._counts.items() if k.startswith("requests.")}
            latency = {
                route: {
                    "mean_seconds": round(total / requests[route], 4),
                    "max_seconds": round(self._latency_max[route], 4),
                }
                for route, total in self._latency_total.items()
            }
            counters = {k: v for k, v in self._counts.items() if not k.startswith("requests.")}
        return {
            "requests": requests,
            "predictions": counters.get("predictions", 0),
            "cache_hits": counters.get("cache_hits", 0),
            "failures": counters.get("failures", 0),
            "skipped_over_budget": counters.get("skipped_over_budget", 0),
            "predicted_in_background": counters.get("predicted_in_background", 0),
            "latency": latency,
        }
