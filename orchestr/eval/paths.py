"""Where eval files live: FastChat's layout `<data_dir>/<bench>/{question.jsonl,model_answer,model_judgment}`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PKG_PREFIX = "pkg:"


def resolve(path: str) -> Path:
    """A configured path: `pkg:rel/path` is a file shipped in orchestr/eval/data, others are plain paths."""
    if path.startswith(PKG_PREFIX):
        # importlib.resources works from an editable checkout and from an installed wheel alike.
        return Path(str(resources.files("orchestr.eval").joinpath("data", path[len(PKG_PREFIX) :])))
    return Path(path).expanduser()


def bench_dir(data_dir: str, bench: str) -> Path:
    return Path(data_dir).expanduser() / bench


def answer_dir(data_dir: str, bench: str) -> Path:
    return bench_dir(data_dir, bench) / "model_answer"


def answer_file(data_dir: str, bench: str, model_id: str) -> Path:
    return answer_dir(data_dir, bench) / f"{model_id}.jsonl"


def judgment_file(data_dir: str, bench: str, judge_name: str, pairwise: bool = False, kind: str | None = None) -> Path:
    """`<judge>_single.jsonl`, `<judge>_pair.jsonl` (FastChat) or `<judge>_<kind>.jsonl` (`arena_hard`)."""
    kind = kind or ("pair" if pairwise else "single")
    return bench_dir(data_dir, bench) / "model_judgment" / f"{judge_name}_{kind}.jsonl"


def results_dir(data_dir: str, bench: str, configured: str | None) -> Path:
    return Path(configured).expanduser() if configured else bench_dir(data_dir, bench) / "results"
