"""Training throughput of `orchestr train` on the embedded model: tokens/s for LoRA and full fine-tune.

    python scripts/bench_train.py                       # both methods, 20 steps each
    python scripts/bench_train.py --methods lora --steps 10 --max-length 256

Each method runs the real `orchestr train` path (recipes.run: TRL SFTTrainer, PEFT) on FastChat's
dummy_conversation.json, without evaluation or checkpoints; the first `--warmup` steps are left out
of the rate. Tokens are the non-padding input tokens the trainer saw (transformers'
num_input_tokens_seen), so the figure is comparable across batch shapes. Prints one JSON line per
method and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fastchat" / "dummy_conversation.json"


def bench(method: str, data: Path, steps: int, warmup: int, max_length: int, batch: int, precision: str,
          threads: int | None) -> dict:
    from transformers import TrainerCallback

    from orchestr.config import compose
    from orchestr.train.recipes import build

    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        cfg = compose([f"train={method}", f"train.data={data}", f"train.max_steps={steps}",
                       f"train.output_dir={out}", f"train.max_length={max_length}", f"train.batch_size={batch}",
                       f"train.precision={precision}", "train.save_steps=100000", "train.data_opts.eval_fraction=0",
                       "train.progress_bar=false", f"train.num_threads={threads or 'null'}"])  # fmt: skip
        prep = build(cfg)
        marks: dict[int, tuple[float, int]] = {}

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                marks[state.global_step] = (time.perf_counter(), int(state.num_input_tokens_seen or 0))

        prep.trainer.add_callback(Clock())
        prep.trainer.train()
    t0, n0 = marks[warmup]
    t1, n1 = marks[steps]
    return {
        "method": "full" if method == "sft" else method,
        "steps_timed": steps - warmup,
        "max_length": max_length,
        "batch_size": batch,
        "precision": precision,
        "tokens": n1 - n0,
        "seconds": round(t1 - t0, 2),
        "tokens_per_s": round((n1 - n0) / (t1 - t0), 1),
        "s_per_step": round((t1 - t0) / (steps - warmup), 2),
        "torch_threads": __import__("torch").get_num_threads(),
        "cpus": os.cpu_count(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--methods", nargs="+", default=["lora", "sft"], choices=["lora", "sft"],
                    help="sft = full fine-tune")  # fmt: skip
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"bench_train: no data file {args.data}", file=sys.stderr)
        return 2
    if not 0 < args.warmup < args.steps:
        print("bench_train: need 0 < --warmup < --steps", file=sys.stderr)
        return 2
    rows = []
    for method in args.methods:
        row = bench(method, args.data, args.steps, args.warmup, args.max_length, args.batch_size, args.precision,
                    args.threads)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| method | precision | batch x max_length | tokens/s | s/step |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['precision']} | {r['batch_size']} x {r['max_length']} | "
              f"{r['tokens_per_s']} | {r['s_per_step']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
