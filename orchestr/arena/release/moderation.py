"""Moderation tags: any OpenAI-compatible `/v1/moderations` endpoint, or local rules.

Each record gets ``openai_moderation``: ``{"flagged", "categories", "category_scores", "source"}``
(OpenAI's result shape plus where it came from), computed over the configured roles' turns.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import httpx
from tqdm import tqdm

from orchestr.arena.records import StepReport, record_text

# Local fallback: a phrase list per OpenAI category. Crude by design: it catches the blatant
# cases when no moderation service is configured, and says so in `source`.
_LOCAL_RULES: dict[str, list[str]] = {
    "violence": [r"kill (?:him|her|them|you|everyone)", r"murder", r"shoot (?:up|him|her|them)", r"bomb (?:a|the)\b",
                 r"make a bomb", r"behead", r"massacre"],
    "self-harm": [r"kill myself", r"suicide", r"self[- ]harm", r"cut myself", r"end my life"],
    "sexual": [r"porn", r"nude", r"explicit sex", r"sexual(?:ly)? explicit", r"erotic"],
    "hate": [r"(?:all|those) \w+ (?:people )?(?:are|should) (?:vermin|subhuman|animals)", r"ethnic cleansing",
             r"inferior race"],
    "harassment": [r"you(?:'re| are) (?:an? )?(?:idiot|moron|stupid|worthless)", r"i will find you",
                   r"go die"],
    "illicit": [r"make (?:meth|cocaine|heroin)", r"launder money", r"buy (?:a )?stolen", r"hack into"],
}  # fmt: skip
_COMPILED = {cat: re.compile("|".join(rf"\b{p}\b" for p in pats), re.I) for cat, pats in _LOCAL_RULES.items()}
BACKENDS = ("auto", "api", "local")


def local_moderation(text: str) -> dict[str, Any]:
    hits = {cat: len(rx.findall(text)) for cat, rx in _COMPILED.items()}
    scores = {cat: min(1.0, 0.6 * n) for cat, n in hits.items()}
    categories = {cat: n > 0 for cat, n in hits.items()}
    return {
        "flagged": any(categories.values()),
        "categories": categories,
        "category_scores": scores,
        "source": "local",
    }


class ModerationClient:
    """POST {api_base}/moderations with a batch of inputs (OpenAI's request and response shape)."""

    def __init__(self, api_base: str, model: str, api_key: str | None, timeout_s: float):
        self.url = api_base.rstrip("/") + "/moderations"
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout_s)

    def moderate(self, texts: list[str]) -> list[dict[str, Any]]:
        resp = self.http.post(self.url, json={"model": self.model, "input": texts}, headers=self.headers)
        if resp.status_code != 200:
            raise RuntimeError(f"{self.url} answered HTTP {resp.status_code}: {resp.text[:200]}")
        results = resp.json().get("results")
        if not isinstance(results, list) or len(results) != len(texts):
            raise RuntimeError(f"{self.url} returned no per-input `results` list")
        return [
            {
                "flagged": bool(r.get("flagged")),
                "categories": dict(r.get("categories") or {}),
                "category_scores": dict(r.get("category_scores") or {}),
                "source": "api",
            }
            for r in results
        ]


def moderate_records(records: list[dict[str, Any]], cfg: Any) -> tuple[list[dict[str, Any]], StepReport]:
    if cfg.backend not in BACKENDS:
        raise ValueError(f"clean.moderation.backend={cfg.backend!r}: expected one of {', '.join(BACKENDS)}")
    if cfg.backend == "api" and not cfg.api_base:
        raise ValueError(
            "clean.moderation.backend=api needs clean.moderation.api_base (e.g. http://host:port/v1)"
        )
    use_api = cfg.backend == "api" or (cfg.backend == "auto" and bool(cfg.api_base))
    client = (
        ModerationClient(cfg.api_base, cfg.model, os.environ.get(cfg.api_key_env), cfg.timeout_s)
        if use_api
        else None
    )
    report = StepReport("moderation", read=len(records))
    batch = max(1, int(cfg.batch_size))
    warned = False
    for i in tqdm(range(0, len(records), batch), desc="moderation", unit="batch", disable=len(records) < 500):
        chunk = records[i : i + batch]
        texts = [record_text(r, list(cfg.roles)) for r in chunk]
        results = None
        if client is not None:
            try:
                results = client.moderate(texts)
            except (httpx.HTTPError, RuntimeError, ValueError) as e:
                if not cfg.fallback_to_local:
                    raise RuntimeError(f"moderation endpoint failed: {e}") from None
                if not warned:
                    print(f"[moderation] endpoint failed ({e}); using local rules", file=sys.stderr)
                    warned = True
        if results is None:
            results = [local_moderation(t) for t in texts]
        for rec, res in zip(chunk, results, strict=True):
            rec["openai_moderation"] = res
            if res["flagged"]:
                report.tag(f"flagged_{res['source']}")
    kept = records
    if cfg.drop_flagged:
        kept = [r for r in records if not r["openai_moderation"]["flagged"]]
        report.drop("flagged", len(records) - len(kept))
    report.kept = len(kept)
    return kept, report
