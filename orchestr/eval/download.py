"""`orchestr eval-data`: fetch a bench's question/reference files and pre-generated answers/judgments.

    orchestr eval-data bench=mt_bench
    orchestr eval-data eval.download.files='[mt_bench/model_answer/vicuna-13b-v1.3.jsonl]'

Everything lands in FastChat's layout under eval.data_dir. Offline it fails within seconds,
naming the URL and the key to change.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx

from orchestr.eval import paths
from orchestr.eval.errors import EvalError, exit_on_user_error


def fetch(url: str, dest: Path, timeout_s: float) -> int:
    """Download url to dest (via a temporary file, so a failed download leaves nothing half-written)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with httpx.stream("GET", url, timeout=httpx.Timeout(timeout_s), follow_redirects=True) as resp:
            if resp.status_code != 200:
                raise EvalError(f"{url}: HTTP {resp.status_code}")
            size = 0
            with tmp.open("wb") as f:
                for chunk in resp.iter_bytes():
                    f.write(chunk)
                    size += len(chunk)
    except httpx.HTTPError as e:
        tmp.unlink(missing_ok=True)
        raise EvalError(
            f"cannot download {url} ({type(e).__name__}: {e}); is this machine offline?\n"
            f"  copy the file to {dest} by hand, or point the config at another URL"
        ) from None
    tmp.replace(dest)
    return size


def plan(cfg: Any) -> list[tuple[str, Path, str]]:
    """(url, destination, config key) for each file to fetch."""
    d = cfg.eval.download
    items: list[tuple[str, Path, str]] = []
    if d.include_bench:
        b = cfg.bench
        for url, path, key in (
            (b.question_url, b.question_file, "bench.question_url"),
            (b.reference_answer_url, b.reference_answer_file, "bench.reference_answer_url"),
        ):
            if url and path and not path.startswith(paths.PKG_PREFIX):
                items.append((url, paths.resolve(path), key))
    for rel in d.files:
        items.append((f"{d.base_url.rstrip('/')}/{rel}", Path(cfg.eval.data_dir).expanduser() / rel, "eval.download.base_url"))
    return items


def run_download(cfg: Any) -> int:
    items = plan(cfg)
    if not items:
        print("eval-data: nothing to download (set eval.download.files or a bench with question_url)")
        return 0
    for url, dest, key in items:
        if dest.is_file() and not cfg.eval.download.overwrite:
            print(f"have {dest}")
            continue
        try:
            size = fetch(url, dest, cfg.eval.download.timeout_s)
        except EvalError as e:
            raise EvalError(f"{e}\n  (the URL comes from {key})") from None
        print(f"got  {dest} ({size:,} bytes)")
    return 0


def main() -> int:
    from orchestr.config import compose

    args = sys.argv[1:]
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip())
        return 0
    with exit_on_user_error("orchestr eval-data"):
        return run_download(compose(args))


if __name__ == "__main__":
    sys.exit(main())
