"""Markdown tables from `orchestr bench serve` JSON files (for docs/benchmarks.md).

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestr.benchmark.report", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--levels", default="1,4,16,64")
    p.add_argument("--ttft-at", type=int, default=16, help="level whose TTFT p50 and RSS are shown")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    header = ("| endpoint | " + " | ".join(f"c={c}" for c in levels)
              + f" | TTFT p50 at c={args.ttft_at} | peak RSS at c={args.ttft_at} |")
    print(header)
    print("|" + "---|" * (len(levels) + 3))
    ratios: list[str] = []
    for f in args.files:
        try:
            report = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            print(f"{f}: {e}", file=sys.stderr)
            return 1
        print("\n".join(rows(report, levels, args.ttft_at)))
        ratios += [f"{line} ({f.name})" for line in ratio_lines(report)]
    if ratios:
        print("\nRatios (output tokens/s, same run):\n" + "\n".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
