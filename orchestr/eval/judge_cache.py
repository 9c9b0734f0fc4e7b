"""What the judge costs: a judgment cache shared by every judge mode, token counts, cost and a budget.

The cache key is a hash of everything that determines a judgment: the judge model, the prompt's
name, the exact messages sent (template filled with question, answers and references) and the
sampling parameters (temperature, max_tokens, response format). A request whose key is in the cache
is answered from it and never sent again, whichever mode or run asks. The cache is one JSONL file,
appended and fsynced per entry (`judge.cache`; null turns it off).

Cost = prompt tokens x `judge.price_input_per_mtok` + completion tokens x `judge.price_output_per_mtok`
(per million tokens). With `judge.budget` set, no request starts once the run's cost reaches it:
the run stops cleanly (running requests finish and are kept) and says how to continue.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from orchestr.eval.errors import EvalError
from orchestr.eval.parallel import StopRun
from orchestr.eval.records import JsonlAppender, read_jsonl


class BudgetExhausted(StopRun):
    pass


def cache_key(model: str, prompt_name: str, messages: list[dict], temperature: float, max_tokens: int,
              response_format: dict | None) -> str:  # fmt: skip
    blob = json.dumps([model, prompt_name, messages, float(temperature), int(max_tokens), response_format],
                      sort_keys=True, ensure_ascii=False)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


class JudgeCache:
    def __init__(self, path: str | Path | None):
        self.path = Path(path).expanduser() if path else None
        self._entries: dict[str, str] = {}
        self._sink: JsonlAppender | None = None
        self._lock = threading.Lock()
        if self.path is not None:
            for r in read_jsonl(self.path, strict=False):
                if isinstance(r, dict) and "key" in r and isinstance(r.get("content"), str):
                    self._entries[r["key"]] = r["content"]

    def get(self, key: str) -> str | None:
        return self._entries.get(key)

    def put(self, key: str, content: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        if self.path is None:
            return
        with self._lock:
            if self._sink is None:
                self._sink = JsonlAppender(self.path)
            self._sink.append({"key": key, "model": model, "content": content,
                               "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})  # fmt: skip
            self._entries[key] = content

    def close(self) -> None:
        with self._lock:
            if self._sink is not None:
                self._sink.close()
                self._sink = None


class MeteredJudge:
    """The judge as the judge modes see it: cached, metered, budgeted."""

    def __init__(self, responder: Any, cfg: Any, structured: bool = False):
        j = cfg.judge
        self.responder = responder
        self.structured = structured  # verdicts as schema-constrained JSON
        self.model = str(j.model or cfg.model.name)
        self.cache = JudgeCache(j.cache)
        self.price_in = float(j.price_input_per_mtok or 0.0)
        self.price_out = float(j.price_output_per_mtok or 0.0)
        self.budget = j.budget
        if self.budget is not None and self.budget <= 0:
            raise EvalError(f"judge.budget={self.budget}: must be a positive amount (or null for no cap)")
        self.cached = 0
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._lock = threading.Lock()

    @property
    def cost(self) -> float:
        return (self.prompt_tokens * self.price_in + self.completion_tokens * self.price_out) / 1e6

    def ask(self, prompt_name: str, messages: list[dict], temperature: float, max_tokens: int,
            schema: dict | None = None) -> str:  # fmt: skip
        key = cache_key(self.model, prompt_name, messages, temperature, max_tokens, schema)
        hit = self.cache.get(key)
        if hit is not None:
            with self._lock:
                self.cached += 1
            return hit
        with self._lock:
            if self.budget is not None and self.cost >= self.budget:
                raise BudgetExhausted(f"judge.budget={self.budget} reached (spent {self.cost:.4f})")
        kw: dict[str, Any] = {}
        if schema is not None:  # an endpoint takes OpenAI's response_format; the in-process model the schema
            from orchestr.eval.client import ChatClient

            kw = ({"response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema,
                                                                               "strict": True}}}
                  if isinstance(self.responder, ChatClient) else {"json_schema": schema})  # fmt: skip
        content = self.responder.chat(messages, temperature, max_tokens, **kw)
        last = getattr(self.responder, "last_usage", None)
        p, c = last() if last is not None else (0, 0)
        with self._lock:
            self.requests += 1
            self.prompt_tokens += p
            self.completion_tokens += c
        self.cache.put(key, content, self.model, p, c)
        return content

    def summary(self) -> str:
        spent = f", cost {self.cost:.4f}" if (self.price_in or self.price_out) else ""
        cap = f" of budget {self.budget}" if self.budget is not None else ""
        return (f"judge requests {self.requests} (+{self.cached} from cache), tokens {self.prompt_tokens} in / "
                f"{self.completion_tokens} out{spent}{cap}")

    def close(self) -> None:
        self.cache.close()
