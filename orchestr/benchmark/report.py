"""Markdown tables from `orchestr bench serve` JSON files (for docs/benchmarks.md): one table of
the files with concurrency levels (fixed, random, sharegpt), one per multiturn or hol file.

    python -m orchestr.benchmark.report bench-results/*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _rss(level: dict) -> str:
    """The worker's peak RSS (the process that holds the model), else the largest figure."""
    rss = level.get("peak_rss_mb") or {}
    if not rss:
        return "-"
    key = next((k for k in rss if k.startswith("worker")), None) or max(rss, key=rss.get)
    return f"{rss[key] / 1024:.2f} GB ({key})"


def rows(report: dict, levels: list[int], ttft_at: int) -> list[str]:
    out = []
    for name, res in report["results"].items():
        by_c = {lv["concurrency"]: lv for lv in res["levels"]}
        cells = [f"{by_c[c]['output_tok_s']:.1f}" if c in by_c else "—" for c in levels]
        at = by_c.get(ttft_at)
        ttft = f"{at['ttft_p50_s']:.2f} s" if at and at["ttft_p50_s"] is not None else "—"
        rss = _rss(at) if at else "-"
        failed = sum(lv["failed"] for lv in res["levels"])
        note = f" ({failed} failed)" if failed else ""
        if report.get("workload"):
            note = f" ({report['workload']}){note}"
        out.append(f"| {name}{note} | {' | '.join(cells)} | {ttft} | {rss} |")
    return out


def ratio_lines(report: dict) -> list[str]:
    if "ratios" not in report:
        return []
    base = report["baseline"]
    lines = []
    for name, per_c in report["ratios"].items():
        if name == base:
            continue
        parts = ", ".join(f"c={c}: {r:.2f}x" for c, r in per_c.items() if r is not None)
        lines.append(f"- {name} / {base}: {parts}")
    return lines


# (column, key, unit) of the multiturn and hol tables; ratios from the file's "ratios"
WORKLOAD_COLUMNS = {
    "multiturn": [("wall time", "wall_s", " s"), ("TTFT turn 1 p50", "ttft_turn1_p50_s", " s"),
                  ("TTFT turns 2.. p50", "ttft_later_p50_s", " s"), ("output tok/s", "output_tok_s", "")],
    "hol": [("short chat alone", "short_alone_ttft_s", " s"),
            ("short chat behind the long prompt", "short_behind_long_ttft_s", " s"), ("slowdown", "slowdown", "x"),
            ("long prompt cold", "long_cold_ttft_s", " s"), ("long prompt repeated", "long_repeat_ttft_s", " s")],
}


def workload_table(report: dict, source: str) -> list[str]:
    """A multiturn or hol file as a table; ``(xR)``: speed against the baseline (> 1: faster)."""
    name = report["workload"]
    cols = WORKLOAD_COLUMNS[name]
    base = report.get("baseline")
    lines = [f"{name} ({source}" + (f"; ratios vs {base}, > 1 is faster" if base else "") + ")", "",
             "| endpoint | " + " | ".join(c for c, _, _ in cols) + " | prefix-cache hit rate |",
             "|" + "---|" * (len(cols) + 2)]
    for ep, res in report["results"].items():
        fig = res.get(name) or {}
        cells = []
        for _, key, unit in cols:
            v = fig.get(key)
            cell = "—" if v is None else f"{v:.2f}{unit}"
            r = report.get("ratios", {}).get(ep, {}).get(key)
            if base and ep != base and r is not None:
                cell += f" ({r:.2f}x)"
            cells.append(cell)
        rate = (fig.get("prefix_cache") or {}).get("hit_rate")
        cells.append("—" if rate is None else f"{rate:.0%}")
        failed = f" ({fig['failed']} failed)" if fig.get("failed") else ""
        lines.append(f"| {ep}{failed} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestr.benchmark.report", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--levels", default="1,4,16,64")
    p.add_argument("--ttft-at", type=int, default=16, help="level whose TTFT p50 and RSS are shown")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    header = ("| endpoint | " + " | ".join(f"c={c}" for c in levels)
              + f" | TTFT p50 at c={args.ttft_at} | peak RSS at c={args.ttft_at} |")
    reports = []
    for f in args.files:
        try:
            reports.append((f, json.loads(f.read_text())))
        except (OSError, ValueError) as e:
            print(f"{f}: {e}", file=sys.stderr)
            return 1
    level_reports = [(f, r) for f, r in reports if r.get("workload") not in WORKLOAD_COLUMNS]
    if level_reports:
        print(header)
        print("|" + "---|" * (len(levels) + 3))
    ratios: list[str] = []
    for f, report in level_reports:
        print("\n".join(rows(report, levels, args.ttft_at)))
        ratios += [f"{line} ({f.name})" for line in ratio_lines(report)]
    if ratios:
        print("\nRatios (output tokens/s, same run):\n" + "\n".join(ratios))
    for f, report in reports:
        if report.get("workload") in WORKLOAD_COLUMNS:
            print("\n" + "\n".join(workload_table(report, f.name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
