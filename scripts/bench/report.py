"""What the bench prints and writes: ``bench <name> <value> <unit>`` and
``ratio <name> <value>`` lines on stdout, progress on stderr (``log``), and
the JSON report with the goals of issue #6 (``build_report``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Figure:
    name: str
    value: float | None  # None: skipped
    unit: str = ""


@dataclass(frozen=True)
class Ratio:
    name: str
    value: float


def _number(value: float, unit: str) -> str:
    if unit in ("rps", "pairs/s"):
        return f"{value:.0f}"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:.4g}"


def format_lines(figures: Sequence[Figure], ratios: Sequence[Ratio]) -> list[str]:
    """``bench <name> <value> <unit>`` (``bench <name> skipped``) and ``ratio <name> <value>``."""
    lines = [
        f"bench {f.name} skipped"
        if f.value is None
        else f"bench {f.name} {_number(f.value, f.unit)} {f.unit}"
        for f in figures
    ]
    lines += [f"ratio {r.name} {r.value:.2f}" for r in ratios]
    return lines


def ratio(name: str, numerator: float | None, denominator: float | None) -> Ratio | None:
    if numerator is None or not denominator:
        return None
    return Ratio(name, numerator / denominator)


TARGETS = {
    "checkuser_cached_vs_empty": 0.8,
    "checkuser_cold_vs_empty": 0.5,
    "evaluatesend_vs_empty": 0.8,
    "checkuser_1m_vs_1k": 0.9,
    "edge_vs_remote_checkuser_per_core": 20.0,
}


def build_report(
    figures: Sequence[Figure], ratios: Sequence[Ratio], scenarios: dict[str, Any], meta: dict[str, Any]
) -> dict[str, Any]:
    targets: dict[str, Any] = {
        name: {"target": f">= {goal}", "met": next((r.value >= goal for r in ratios if r.name == name), None)}
        for name, goal in TARGETS.items()
    }
    pairs = next((f.value for f in figures if f.name == "pairing_pairs"), None)
    targets["pairing_pairs"] = {"target": ">= 500 pairs/s", "met": None if pairs is None else pairs >= 500}
    p99 = next((f.value for f in figures if f.name == "checkuser_p99_half_peak"), None)
    targets["checkuser_p99_half_peak"] = {"target": "< 5 ms", "met": None if p99 is None else p99 < 5.0}
    starve = next(
        (r.value for r in ratios if r.name == "checkuser_consistent_p99_2000_streams_vs_idle"), None
    )
    targets["checkuser_consistent_p99_2000_streams_vs_idle"] = {
        "target": "<= 2",
        "met": None if starve is None else starve <= 2.0,
    }
    cost = next((r.value for r in ratios if r.name == "checkuser_http_cost_vs_grpc"), None)
    targets["checkuser_http_cost_vs_grpc"] = {
        "target": "<= 1.5",
        "met": None if cost is None else cost <= 1.5,
    }
    for page in ("console_channel_page_10k", "console_channel_search_10k", "console_approvals_page"):
        ms = next((f.value for f in figures if f.name == page), None)
        targets[page] = {"target": "< 200 ms", "met": None if ms is None else ms < 200.0}
    for name, goal in (
        ("edge_revocation_p99_under_load", 50.0),  # the change stream over HTTP
        ("edge_revocation_p99_under_load_grpc", 50.0),  # over gRPC, for comparison
        ("edge_stale_allows_after_cut", 0.0),
    ):
        value = next((f.value for f in figures if f.name == name), None)
        targets[name] = {"target": f"<= {goal:g}", "met": None if value is None else value <= goal}
    return {
        **meta,
        "figures": [asdict(f) for f in figures],
        "ratios": {r.name: round(r.value, 4) for r in ratios},
        "targets": targets,
        "scenarios": scenarios,
        "lines": format_lines(figures, ratios),
    }


def server_logs(home: Path) -> dict[str, Any]:
    """Warnings and errors the servers logged: a cache that switched
    itself off, a listener that reconnected, an exception."""
    levels: Counter[str] = Counter()
    examples: list[str] = []
    for path in sorted(home.glob("*.log")):
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict) or record.get("level") not in (
                    "warning",
                    "error",
                    "critical",
                ):
                    continue
                levels[record["level"]] += 1
                text = f"{path.stem}: {record['level']}: {record.get('msg', '')}"
                if text not in examples and len(examples) < 10:
                    examples.append(text)
    for text in examples:
        log(f"server log: {text}")
    return {"by_level": dict(levels), "examples": examples}
