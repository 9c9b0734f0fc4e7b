"""Terminal tables and ratios of the multiturn and hol workloads (the levels of random and
sharegpt print like fixed's)."""

from __future__ import annotations

# Figures compared with the baseline, and how: "time" (baseline / this: > 1 is faster than the
# baseline) or "rate" (this / baseline: > 1 is more than the baseline).
COMPARED: dict[str, list[tuple[str, str]]] = {
    "multiturn": [("wall_s", "time"), ("ttft_turn1_p50_s", "time"), ("ttft_later_p50_s", "time"),
                  ("output_tok_s", "rate")],
    "hol": [("short_behind_long_ttft_s", "time"), ("long_cold_ttft_s", "time"), ("long_repeat_ttft_s", "time")],
}


def workload_ratios(name: str, results: dict[str, dict], baseline: str) -> dict[str, dict[str, float | None]]:
    """Per endpoint and figure, the ratio to the baseline's (see COMPARED); higher is better."""
    base = results[baseline].get(name) or {}
    out: dict[str, dict[str, float | None]] = {}
    for ep, res in results.items():
        mine = res.get(name) or {}
        out[ep] = {}
        for key, how in COMPARED[name]:
            a, b = mine.get(key), base.get(key)
            if not a or not b:
                out[ep][key] = None
            else:
                out[ep][key] = round(b / a if how == "time" else a / b, 3)
    return out


def print_workload_table(name: str, results: dict[str, dict], baseline: str | None,
                         ratios: dict[str, dict[str, float | None]] | None) -> None:
    """The multiturn or hol figures of every endpoint, with ratios vs the baseline."""
    from rich.console import Console
    from rich.table import Table

    if name == "multiturn":
        cols = [("wall time", "wall_s", "s"), ("TTFT turn 1 p50", "ttft_turn1_p50_s", "s"),
                ("p90", "ttft_turn1_p90_s", "s"), ("TTFT turns 2.. p50", "ttft_later_p50_s", "s"),
                ("p90", "ttft_later_p90_s", "s"), ("output tok/s", "output_tok_s", "")]
    else:
        cols = [("short alone", "short_alone_ttft_s", "s"), ("short behind long", "short_behind_long_ttft_s", "s"),
                ("slowdown", "slowdown", "x"), ("long cold", "long_cold_ttft_s", "s"),
                ("long repeated", "long_repeat_ttft_s", "s")]
    title = {"multiturn": "multi-turn conversations over a shared system prompt",
             "hol": "head-of-line probe: time to first token"}[name]
    if baseline:
        title += f"; (xR: R = speed vs {baseline}, > 1 is faster)"
    t = Table(title=title)
    t.add_column("endpoint")
    for label, _, _ in cols:
        t.add_column(label, justify="right")
    t.add_column("prefix-cache hits", justify="right")
    t.add_column("failed", justify="right")
    for ep, res in results.items():
        fig = res.get(name) or {}
        cells = []
        for _, key, unit in cols:
            v = fig.get(key)
            cell = "-" if v is None else f"{v:.2f}{unit}"
            r = (ratios or {}).get(ep, {}).get(key)
            if baseline and ep != baseline and r is not None:
                cell += f" x{r:.2f}"
            cells.append(cell)
        pc = fig.get("prefix_cache") or {}
        cells.append("-" if pc.get("hit_rate") is None else f"{pc['hit_rate']:.0%}")
        cells.append(str(fig.get("failed", "-")))
        t.add_row(ep, *cells)
    Console(width=200).print(t)
    if name == "multiturn":
        for ep, res in results.items():
            per_turn = (res.get(name) or {}).get("per_turn", [])
            counts = ", ".join(f"turn {p['turn']}: {p['prompt_tokens_mean']}" for p in per_turn)
            print(f"{ep}: prompt tokens per turn (mean, server's count): {counts or '-'}")


def print_level_extras(level: dict) -> None:
    """The random/sharegpt additions to a level's line."""
    rate = level.get("request_rate")
    print(f"{'':>24} prompt tokens mean {level.get('prompt_tokens_mean')}"
          + (f", Poisson arrivals {rate}/s" if rate else ""), flush=True)
