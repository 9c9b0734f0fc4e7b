"""Prompts and reference answer lengths from a conversations file in ShareGPT format, the one
FastChat trains on: a JSON list of ``{"id": ..., "conversations": [{"from": "human" | "gpt",
"value": ...}, ...]}``. Each conversation gives its first human message as the prompt and the
token count of the reply that follows as the answer length to ask for."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from orchestr.benchmark.servers import BenchError
from orchestr.benchmark.synthetic import Counter

HUMAN = ("human", "user")
TEMPLATE_TOKENS = 64  # room left for the chat template (and a default system prompt) within max_len
ASSISTANT = ("gpt", "assistant", "chatgpt", "bard", "bing")


@dataclass(frozen=True)
class DatasetPrompt:
    id: str
    prompt: str
    prompt_tokens: int
    output_tokens: int  # the reference answer's length, in the benchmark tokenizer's tokens


def _bad(path: Path, why: str) -> BenchError:
    return BenchError(f"--dataset {path}: {why} (expected ShareGPT format: a JSON list of "
                      '{"id", "conversations": [{"from": "human"/"gpt", "value": ...}]})')


def load_sharegpt(path: Path, count: Counter, *, num_prompts: int, seed: int = 0,
                  max_len: int = 2048) -> list[DatasetPrompt]:
    """``num_prompts`` pairs drawn (seeded shuffle) from the file's usable first exchanges: a
    non-empty prompt and reply, prompt + reply + the chat template within ``max_len`` tokens. Raises BenchError for a
    file that cannot be read or is not in the format, and when no exchange is usable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise BenchError(f"--dataset {path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(path, f"not JSON ({e})") from None
    if not isinstance(data, list):
        raise _bad(path, f"the top level is a {type(data).__name__}, not a list")
    pairs: list[tuple[str, str, str]] = []
    for n, item in enumerate(data):
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str)
                                                  and isinstance(t.get("from"), str) for t in turns):
            raise _bad(path, f"entry {n} has no list of conversations with 'from' and 'value' strings")
        if len(turns) >= 2 and turns[0]["from"] in HUMAN and turns[1]["from"] in ASSISTANT:
            pairs.append((str(item.get("id", n)), turns[0]["value"], turns[1]["value"]))
    random.Random(seed).shuffle(pairs)
    out: list[DatasetPrompt] = []
    for id_, prompt, reply in pairs:
        p, o = count(prompt), count(reply)
        if p < 1 or o < 1 or p + o + TEMPLATE_TOKENS > max_len:
            continue
        out.append(DatasetPrompt(id_, prompt, p, o))
        if len(out) == num_prompts:
            break
    if not out:
        raise _bad(path, f"no conversation starts with a human message answered within {max_len} tokens")
    return out
