"""OpenVINO GenAI's ContinuousBatchingPipeline driven in this process, no HTTP: the upper bound
the OpenVINO worker is compared with (``--target openvino:``).

The load is the same as over HTTP: ``concurrency`` requests in flight, each replaced by the next
prompt when it finishes, greedy, ``max_tokens`` each; a request's first token is stamped when the
step that produced it returns, and answers are re-counted by the benchmark's tokenizer like every
other target's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestr.benchmark.client import RequestRecord
from orchestr.benchmark.prompts import prompt_messages
from orchestr.benchmark.stats import LevelResult, summarise

# `openvino:KEY=VALUE ...` settings and their defaults (the worker's defaults for the embedded model)
SETTINGS = {"threads": None, "dtype": "bfloat16", "max_batch_size": 64, "max_num_batched_tokens": 512,
            "kv_cache_tokens": 32768, "weight_format": "fp32"}


def parse_settings(text: str) -> dict[str, Any]:
    """``threads=2 dtype=bfloat16`` -> settings; unknown keys are a ValueError naming them."""
    out = dict(SETTINGS)
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or key not in SETTINGS:
            raise ValueError(f"openvino target: unknown setting {item!r} (KEY=VALUE with KEY one of "
                             f"{', '.join(SETTINGS)})")
        out[key] = value if key in ("dtype", "weight_format") else int(value)
    return out


class OpenVinoInProcess:
    def __init__(self, ir_folder: str | Path, settings: dict[str, Any]) -> None:
        import argparse

        import openvino_genai as ov_genai
        from transformers import AutoTokenizer

        from orchestr.services.openvino_engine import plugin_properties, scheduler_settings

        args = argparse.Namespace(max_batch_size=settings["max_batch_size"], batching=True,
                                  max_num_batched_tokens=settings["max_num_batched_tokens"],
                                  kv_cache_tokens=settings["kv_cache_tokens"], num_threads=settings["threads"],
                                  dtype=settings["dtype"], prefix_caching=False)
        sched = ov_genai.SchedulerConfig()
        for key, value in scheduler_settings(args).items():
            setattr(sched, key, value)
        self.ov = ov_genai
        self.pipe = ov_genai.ContinuousBatchingPipeline(str(ir_folder), sched, "CPU", plugin_properties(args))
        self.tokenizer = AutoTokenizer.from_pretrained(str(ir_folder))
        self.pid = os.getpid()
        self._next_id = 0

    def _ids(self, index: int) -> list[int]:
        text = self.tokenizer.apply_chat_template(prompt_messages(index), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _config(self, max_tokens: int) -> Any:
        config = self.ov.GenerationConfig()
        config.max_new_tokens = max_tokens
        config.do_sample = False
        config.apply_chat_template = False
        eos = self.tokenizer.eos_token_id
        if eos is not None:
            config.eos_token_id = eos
            config.stop_token_ids = {eos}
        return config

    def run(self, concurrency: int, num_requests: int, max_tokens: int,
            count_tokens: Callable[[str], int] | None = None) -> tuple[list[RequestRecord], float]:
        import numpy as np
        import openvino as ov

        prompts = [self._ids(i) for i in range(num_requests)]
        config = self._config(max_tokens)
        todo = iter(range(num_requests))
        active: dict[int, tuple[Any, RequestRecord, list[int]]] = {}
        records: list[RequestRecord] = []
        t0 = time.perf_counter()
        while True:
            while len(active) < concurrency:
                i = next(todo, None)
                if i is None:
                    break
                self._next_id += 1
                rec = RequestRecord(index=i, start=time.perf_counter())
                handle = self.pipe.add_request(self._next_id, ov.Tensor(np.array([prompts[i]], dtype=np.int64)), config)
                active[self._next_id] = (handle, rec, [])
            if not active:
                break
            self.pipe.step()
            now = time.perf_counter()
            for rid, (handle, rec, out) in list(active.items()):
                while handle.can_read():
                    for o in handle.read().values():
                        out += o.generated_ids
                        if rec.first_token is None and o.generated_ids:
                            rec.first_token = now
                status = handle.get_status().name
                if status != "RUNNING":
                    rec.end = now
                    rec.ok = status == "FINISHED"
                    rec.error = None if rec.ok else f"request {status.lower()}"
                    rec.text = self.tokenizer.decode(out, skip_special_tokens=True)
                    records.append(rec)
                    del active[rid]
        duration = time.perf_counter() - t0
        for rec in records:
            rec.output_tokens = count_tokens(rec.text) if (count_tokens and rec.ok) else 0
        return records, duration

    def run_level(self, *, concurrency: int, num_requests: int, max_tokens: int,
                  count_tokens: Callable[[str], int], rss_pids: dict[str, int] | None = None, **_: Any) -> LevelResult:
        from orchestr.benchmark.runner import RssSampler, _loadavg

        before = _loadavg()
        with RssSampler(rss_pids or {}) as rss:
            records, duration = self.run(concurrency, num_requests, max_tokens, count_tokens)
        result = summarise(concurrency, records, duration)
        result.peak_rss_mb = dict(rss.peak_mb)
        result.loadavg = [before, _loadavg()]
        return result

    def warm_up(self, count: int) -> None:
        if count > 0:
            records, _ = self.run(1, count, 16)
            bad = [r.error for r in records if not r.ok]
            if bad:
                raise RuntimeError(f"OpenVINO warm-up failed: {bad[0]}")
