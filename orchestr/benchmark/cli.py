"""`orchestr bench serve`: throughput and latency of OpenAI-compatible servers under concurrent
streaming load, one server or several compared on the same prompts.

    orchestr bench serve --base-url http://127.0.0.1:8000/v1 --concurrency 1,4,16,64
    orchestr bench serve --target batched=orchestr: --target "unbatched=orchestr:engine.batching=false" \\
        --target vllm --concurrency 16 --output bench.json
    orchestr bench serve --workload multiturn --conversations 8 --turns 4 --target vllm --target orchestr:

Workloads (--workload):
  fixed      8 fixed "write a long story" prompts at each --concurrency level (the default)
  multiturn  --conversations chats at once, --turns turns each, over one shared system prompt of
             about --system-prompt-tokens tokens; every turn resends the whole history with the
             assistant's actual answers (--answer-tokens each). Wall time, TTFT of turn 1 and of
             turns 2.. separately, output tokens/s, prompt tokens per turn (the server's usage)
  random     --num-requests prompts of --input-len-dist tokens asking for --output-len-dist
             tokens (seeded), at each --concurrency level; --request-rate: Poisson arrivals
  sharegpt   first exchanges of a ShareGPT-format conversations file (--dataset), the reference
             answer's length as max_tokens, at each --concurrency level (--request-rate as above)
  hol        head-of-line probe: a cold --long-prompt-tokens prompt, a short 5-token chat
             --probe-delay s later; the short one's TTFT against its TTFT alone (median of
             --probe-repeats on the idle server), and the long prompt's TTFT cold and repeated
Every workload streams at temperature 0 and re-counts answers with --tokenizer. The workloads
other than fixed need an HTTP target (not openvino:, which runs the fixed prompts in process).
Where the server has prefix-cache counters (vllm:prefix_cache_queries/hits) at its /metrics (an
orchestr: target's worker, a launched vllm target, a url: target's own /metrics, or --metrics-url),
their hit rate during the workload is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from orchestr.benchmark.lengths import parse_length_dist
from orchestr.benchmark.prompts import PROMPTS
from orchestr.benchmark.servers import BenchError, BenchOptions, Endpoint, Server, UrlServer, parse_target
from orchestr.benchmark.workloads import WORKLOADS

DEFAULT_TOKENIZER = "embedded://SmolLM2-135M-Instruct"


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--concurrency wants comma-separated integers, got {text!r}") from None
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError("--concurrency levels must be >= 1")
    return levels


def _dist(text: str):
    try:
        return parse_length_dist(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _metrics_url(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"NAME=URL expected (e.g. api=http://127.0.0.1:21002/metrics), got {text!r}")
    return name, url


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestr bench serve", description=__doc__.split("\n")[0],
                                epilog=__doc__[__doc__.index("Workloads"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_argument_group("what to measure (one --base-url, or one or more --target)")
    where.add_argument("--base-url", help="an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    where.add_argument("--target", action="append", default=[], metavar="[NAME=]KIND[:ARGS]",
                       help="url:URL | worker:URL | orchestr:HYDRA_OVERRIDES | vllm:VLLM_ARGS | "
                            "openvino:KEY=VALUE... (OpenVINO GenAI in process); repeat to "
                            "compare (run one after the other; ratios against the first, or --baseline)")
    where.add_argument("--baseline", help="endpoint name the ratios are taken against (default: the first)")
    where.add_argument("--direct-worker", action="store_true",
                       help="orchestr targets: also send the same load to the worker directly (NAME/worker)")
    load = p.add_argument_group("load")
    load.add_argument("--concurrency", type=_levels, default=[1, 4, 16, 64], help="levels, e.g. 1,4,16,64")
    load.add_argument("--num-requests", type=int, default=32,
                      help="requests per level (at least the level's concurrency)")
    load.add_argument("--max-tokens", type=int, default=128)
    load.add_argument("--model", help="model name to request (default: the server's first model)")
    load.add_argument("--api-key", help="Bearer key for the API server")
    load.add_argument("--warmup", type=int, default=2, help="unmeasured short requests before the levels")
    load.add_argument("--timeout", type=float, default=900.0, help="per-request timeout, seconds")
    load.add_argument("--workload", choices=WORKLOADS, default="fixed", help="what to send (see above)")
    load.add_argument("--seed", type=int, default=0, help="seed of the generated prompts and arrivals")
    chat = p.add_argument_group("multiturn and hol workloads")
    chat.add_argument("--conversations", type=int, default=8, help="multiturn: conversations at once")
    chat.add_argument("--turns", type=int, default=4, help="multiturn: turns per conversation")
    chat.add_argument("--system-prompt-tokens", type=int, default=950,
                      help="multiturn: tokens of the shared system prompt (generated English text)")
    chat.add_argument("--answer-tokens", type=int, default=32, help="multiturn, hol: max_tokens of each answer")
    chat.add_argument("--long-prompt-tokens", type=int, default=1660, help="hol: tokens of the cold long prompt")
    chat.add_argument("--probe-delay", type=float, default=0.3,
                      help="hol: seconds between the long prompt and the short chat")
    chat.add_argument("--probe-repeats", type=int, default=3,
                      help="hol: times the short chat is timed alone first (the median is its time alone)")
    rand = p.add_argument_group("random and sharegpt workloads (--num-requests prompts per level)")
    rand.add_argument("--input-len-dist", type=_dist, default=parse_length_dist("uniform:64:1024"),
                      help="random: prompt tokens, fixed:N | uniform:LO:HI | lognormal:MEDIAN:SIGMA[:MAX]")
    rand.add_argument("--output-len-dist", type=_dist, default=parse_length_dist("uniform:16:128"),
                      help="random: max_tokens of each request, same forms")
    rand.add_argument("--request-rate", type=float,
                      help="requests per second arriving as a Poisson process (default: all at once, "
                           "at most the level's concurrency in flight)")
    rand.add_argument("--dataset", type=Path, help="sharegpt: the conversations file (FastChat's format)")
    rand.add_argument("--max-model-len", type=int, default=2048,
                      help="sharegpt: skip exchanges whose prompt + reference answer + 64 tokens of chat "
                           "template are longer")
    p.add_argument("--metrics-url", type=_metrics_url, action="append", default=[], metavar="NAME=URL",
                   help="the Prometheus /metrics with endpoint NAME's prefix-cache counters (for url: "
                        "targets; --base-url's endpoint is named by its URL)")
    count = p.add_argument_group("token counting and launched servers")
    count.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                       help="tokenizer that re-counts every answer's tokens (a model path orchestr accepts)")
    count.add_argument("--model-path", default=DEFAULT_TOKENIZER, help="model that launched vllm targets serve")
    count.add_argument("--model-name", default="smollm2-135m", help="name launched vllm targets serve it as")
    count.add_argument("--vllm-python", help="interpreter of the vLLM environment (default .venv-vllm/bin/python)")
    count.add_argument("--start-timeout", type=float, default=900.0, help="seconds a launched server may take")
    p.add_argument("--output", "-o", type=Path, help="write the figures as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def load_counter(tokenizer: str):
    """A function text -> token count, with the model's own tokenizer."""
    from transformers import AutoTokenizer

    from orchestr.engine.loader import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer))

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0

    return count


def discover_model(ep: Endpoint, api_key: str | None) -> str:
    import httpx

    if ep.local is not None:
        return "in-process"

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        if ep.protocol == "openai":
            r = httpx.get(f"{ep.base_url}/models", headers=headers, timeout=30)
            r.raise_for_status()
            names = [m["id"] for m in r.json().get("data", [])]
        else:
            from orchestr.secrets import bearer, service_secret

            r = httpx.post(f"{ep.base_url}/worker_get_status", headers=bearer(service_secret()), timeout=30)
            r.raise_for_status()
            names = list(r.json().get("model_names", []))
    except (httpx.HTTPError, ValueError, KeyError) as e:
        raise BenchError(f"{ep.name}: cannot list models at {ep.base_url}: {e}") from None
    if not names:
        raise BenchError(f"{ep.name}: {ep.base_url} serves no model")
    return names[0]


def _fmt(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.2f}{unit}"


def print_level(name: str, r: dict) -> None:
    rss = ", ".join(f"{k} {v:.0f} MB" for k, v in r["peak_rss_mb"].items())
    print(f"{name:>24} c={r['concurrency']:<3} {r['output_tok_s']:8.1f} tok/s {r['req_s']:6.2f} req/s  "
          f"TTFT p50 {_fmt(r['ttft_p50_s'], 's')} p99 {_fmt(r['ttft_p99_s'], 's')}  "
          f"e2e p50 {_fmt(r['latency_p50_s'], 's')} p99 {_fmt(r['latency_p99_s'], 's')}  "
          f"ok {r['completed']}/{r['requests']}" + (f"  peak RSS: {rss}" if rss else ""), flush=True)
    for err in r["errors"]:
        print(f"{'':>24} error: {err}", flush=True)


def ratios(results: dict[str, dict], baseline: str) -> dict[str, dict[str, float | None]]:
    """Output tok/s of each endpoint divided by the baseline's, per concurrency level."""
    base = {lv["concurrency"]: lv["output_tok_s"] for lv in results[baseline]["levels"]}
    out: dict[str, dict[str, float | None]] = {}
    for name, res in results.items():
        out[name] = {}
        for lv in res["levels"]:
            b = base.get(lv["concurrency"])
            out[name][str(lv["concurrency"])] = round(lv["output_tok_s"] / b, 3) if b else None
    return out


def print_summary(results: dict[str, dict], baseline: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    levels = sorted({lv["concurrency"] for r in results.values() for lv in r["levels"]})
    rat = ratios(results, baseline) if baseline else {}
    t = Table(title="output tokens/s (TTFT p50)" + (f"; ratio vs {baseline}" if baseline else ""))
    t.add_column("endpoint")
    for c in levels:
        t.add_column(f"c={c}", justify="right")
    for name, res in results.items():
        by_c = {lv["concurrency"]: lv for lv in res["levels"]}
        cells = []
        for c in levels:
            lv = by_c.get(c)
            if lv is None:
                cells.append("-")
                continue
            cell = f"{lv['output_tok_s']:.1f} ({_fmt(lv['ttft_p50_s'], 's')})"
            r = rat.get(name, {}).get(str(c))
            if baseline and name != baseline and r is not None:
                cell += f" x{r:.2f}"
            cells.append(cell)
        t.add_row(name, *cells)
    Console(width=200).print(t)


def workload_options(args: argparse.Namespace) -> dict:
    """The options of ``args.workload`` (what the JSON records as its load)."""
    w = args.workload
    if w == "multiturn":
        return {"conversations": args.conversations, "turns": args.turns,
                "system_prompt_tokens": args.system_prompt_tokens, "answer_tokens": args.answer_tokens,
                "seed": args.seed}
    if w == "hol":
        return {"long_prompt_tokens": args.long_prompt_tokens, "probe_delay": args.probe_delay,
                "probe_repeats": args.probe_repeats, "answer_tokens": args.answer_tokens}
    common = {"num_prompts": args.num_requests, "concurrency": args.concurrency,
              "request_rate": args.request_rate, "seed": args.seed}
    if w == "random":
        return {**common, "input_len_dist": args.input_len_dist, "output_len_dist": args.output_len_dist}
    return {**common, "dataset": args.dataset, "max_model_len": args.max_model_len}


def check_workload_args(args: argparse.Namespace) -> str | None:
    """A one-line complaint about the workload's options, or None."""
    w = args.workload
    positive = {"multiturn": ("conversations", "turns", "system_prompt_tokens", "answer_tokens"),
                "hol": ("long_prompt_tokens", "probe_repeats", "answer_tokens"),
                "sharegpt": ("max_model_len",)}.get(w, ())
    for key in positive:
        if getattr(args, key) < 1:
            return f"--{key.replace('_', '-')} must be >= 1"
    if w == "hol" and args.probe_delay < 0:
        return "--probe-delay must be >= 0"
    if args.request_rate is not None and args.request_rate <= 0:
        return "--request-rate must be > 0"
    if w == "sharegpt" and args.dataset is None:
        return "--workload sharegpt needs --dataset PATH (a ShareGPT-format conversations file)"
    if w != "fixed" and any(t.split("=", 1)[-1].strip().startswith("openvino") for t in args.target):
        return f"--workload {w}: openvino: targets run only the fixed workload (use orchestr:model=...-openvino)"
    return None


def run(args: argparse.Namespace) -> int:
    opts = BenchOptions(model_name=args.model_name, model_path=args.model_path, direct_worker=args.direct_worker,
                        vllm_python=args.vllm_python, start_timeout_s=args.start_timeout,
                        vllm_stats=args.workload != "fixed")
    try:
        servers: list[Server] = [parse_target(t, opts) for t in args.target]
    except BenchError as e:
        print(f"orchestr bench serve: {e}", file=sys.stderr)
        return 2
    if args.base_url:
        servers.insert(0, UrlServer(args.base_url, "url", args.base_url, opts))
    if not servers:
        print("orchestr bench serve: give --base-url URL or at least one --target", file=sys.stderr)
        return 2
    from orchestr.benchmark.runner import run_level, warm_up

    print(f"loading tokenizer {args.tokenizer} (every answer is re-tokenised with it)", flush=True)
    count = load_counter(args.tokenizer)
    workload = None
    if args.workload != "fixed":
        from orchestr.benchmark.workloads import prepare

        try:
            workload = prepare(args.workload, workload_options(args), count)
        except BenchError as e:
            print(f"orchestr bench serve: {e}", file=sys.stderr)
            return 2
    results: dict[str, dict] = {}
    report = {
        "benchmark": "orchestr bench serve",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": {"machine": platform.machine(), "cpus": _cpu_count(), "python": platform.python_version()},
        "load": {"prompts": len(PROMPTS), "max_tokens": args.max_tokens, "temperature": 0.0,
                 "num_requests": args.num_requests, "concurrency": args.concurrency, "stream": True,
                 "tokenizer": args.tokenizer},
        "results": results,
    }
    if workload is not None:
        report["workload"] = workload.name
        report["load"] = {**workload.options, "temperature": 0.0, "stream": True, "tokenizer": args.tokenizer}
    metrics_urls = dict(args.metrics_url)
    for server in servers:
        try:
            endpoints = server.start()
            for ep in endpoints:
                model = args.model or discover_model(ep, args.api_key)
                results[ep.name] = {"target": server.describe(), "protocol": ep.protocol,
                                    "base_url": ep.base_url, "model": model, "levels": []}
                if ep.name in metrics_urls:
                    from orchestr.secrets import bearer, service_secret

                    ep.metrics_url, ep.metrics_headers = metrics_urls[ep.name], bearer(service_secret())
                if ep.local is not None:
                    ep.local.warm_up(args.warmup)
                    continue
                warm_up(protocol=ep.protocol, base_url=ep.base_url, model=model, count=args.warmup,
                        api_key=args.api_key, timeout_s=args.timeout)
            if workload is not None:
                for ep in endpoints:
                    run_workload_on(workload, ep, results[ep.name], args, count)
                    _write(args.output, report)
                continue
            # Levels outer, endpoints inner: an API and its worker measured back to back per level.
            for c in args.concurrency:
                for ep in endpoints:
                    res = results[ep.name]
                    run = ep.local.run_level if ep.local is not None else run_level
                    level = run(protocol=ep.protocol, base_url=ep.base_url, model=res["model"],
                                concurrency=c, num_requests=max(args.num_requests, c),
                                max_tokens=args.max_tokens, count_tokens=count, api_key=args.api_key,
                                timeout_s=args.timeout, rss_pids=ep.pids, progress=not args.no_progress,
                                label=ep.name).to_dict()
                    res["levels"].append(level)
                    print_level(ep.name, level)
                    _write(args.output, report)
        except (BenchError, RuntimeError) as e:
            print(f"orchestr bench serve: {e}", file=sys.stderr)
            return 1
        finally:
            server.stop()
    baseline = args.baseline or next(iter(results), None)
    if baseline not in results:
        print(f"orchestr bench serve: --baseline {baseline!r} is not an endpoint ({', '.join(results)})",
              file=sys.stderr)
        baseline = None
    summarise_run(report, results, baseline if len(results) > 1 else None, args.workload)
    _write(args.output, report)
    if args.output:
        print(f"figures written to {args.output}")
    failed = sum(lv["failed"] for r in results.values() for lv in r.get("levels", []))
    failed += sum((r.get(args.workload) or {}).get("failed", 0) for r in results.values())
    return 1 if failed else 0


def run_workload_on(workload, ep: Endpoint, res: dict, args: argparse.Namespace, count) -> None:
    """One endpoint through a workload other than fixed; its figures go into ``res``."""
    from orchestr.benchmark.workload_tables import print_level_extras
    from orchestr.benchmark.workloads import Target, run_workload

    target = Target(ep, res["model"], args.api_key, args.timeout, count, progress=not args.no_progress)
    out = run_workload(workload, target, args.concurrency)
    if "levels" in out:  # random, sharegpt: levels like fixed's, with the prefix-cache figures
        res.update(out)
        for level in res["levels"]:
            print_level(ep.name, level)
            print_level_extras(level)
    else:
        del res["levels"]
        res[workload.name] = out
        for err in out.get("errors", []):
            print(f"{ep.name:>24} error: {err}", flush=True)
    pc = out.get("prefix_cache")
    if pc and pc.get("hit_rate") is not None:
        print(f"{ep.name:>24} prefix-cache hit rate {pc['hit_rate']:.1%} "
              f"({pc['hit_tokens']} of {pc['queried_tokens']} prompt tokens)", flush=True)


def summarise_run(report: dict, results: dict[str, dict], baseline: str | None, workload: str) -> None:
    """Ratios into the report and the summary table on the terminal."""
    if workload in ("multiturn", "hol"):
        from orchestr.benchmark.workload_tables import print_workload_table, workload_ratios

        rat = workload_ratios(workload, results, baseline) if baseline else None
        if rat is not None:
            report["baseline"], report["ratios"] = baseline, rat
        print_workload_table(workload, results, baseline, rat)
        return
    if baseline:
        report["baseline"] = baseline
        report["ratios"] = ratios(results, baseline)
    print_summary(results, baseline)


def _cpu_count() -> int:
    from orchestr.engine.threads import machine_cores  # torch: imported only when results are written

    return machine_cores()


def _write(path: Path | None, report: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: orchestr bench serve [OPTIONS]   (`orchestr bench serve --help`)")
        return 0 if argv else 2
    if argv[0] != "serve":
        print(f"orchestr bench: unknown benchmark {argv[0]!r} (available: serve)", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv[1:])
    if args.num_requests < 1 or args.max_tokens < 1:
        print("orchestr bench serve: --num-requests and --max-tokens must be >= 1", file=sys.stderr)
        return 2
    complaint = check_workload_args(args)
    if complaint:
        print(f"orchestr bench serve: {complaint}", file=sys.stderr)
        return 2
    import signal

    def _interrupt(_sig, _frame):
        raise KeyboardInterrupt

    # SIGTERM (and SIGINT, even when started in the background where it is ignored) unwinds
    # like Ctrl-C, so the servers this run launched are stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
