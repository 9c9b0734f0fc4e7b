"""Extra toxicity tag from a pluggable scorer.

`clean.toxicity.scorer` is a `module:function` path; the function takes the text (and the
`scorer_kwargs`) and returns a score in [0, 1]. Records get `toxicity_score` and `toxic`.
The built-in `lexicon_score` is a crude insult/profanity density, good enough as a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from hydra.utils import get_method
from tqdm import tqdm

from orchestr.arena.records import StepReport, record_text

_TOXIC = {
    "idiot", "idiots", "stupid", "moron", "morons", "dumb", "loser", "losers", "hate", "pathetic",
    "worthless", "disgusting", "shut up", "trash", "garbage", "ugly", "kill", "die", "scum",
    "fuck", "fucking", "shit", "bitch", "bastard", "asshole", "crap", "damn",
}  # fmt: skip
_WORD = re.compile(r"[a-z']+")


def lexicon_score(text: str, saturation: float = 3.0) -> float:
    """Toxic words counted (phrases included), saturating at `saturation` hits -> 1.0."""
    lowered = text.lower()
    words = _WORD.findall(lowered)
    hits = sum(w in _TOXIC for w in words) + lowered.count("shut up")
    return min(1.0, hits / float(saturation))


def load_scorer(path: str) -> Callable[..., float]:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"clean.toxicity.scorer={path!r}: expected 'package.module:function'")
    try:
        return get_method(f"{module_name}.{attr}")  # Hydra's importer (as `_target_` uses)
    except Exception as e:
        cause = e.__cause__ or e
        raise ValueError(f"clean.toxicity.scorer={path!r}: cannot import it ({type(cause).__name__}: {cause})") from None


def tag_records(records: list[dict[str, Any]], cfg: Any) -> tuple[list[dict[str, Any]], StepReport]:
    scorer = load_scorer(cfg.scorer)
    kwargs = dict(cfg.scorer_kwargs or {})
    report = StepReport("toxicity", read=len(records))
    kept = []
    for rec in tqdm(records, desc="toxicity", unit="rec", disable=len(records) < 1000):
        score = float(scorer(record_text(rec, list(cfg.roles)), **kwargs))
        rec["toxicity_score"] = round(score, 4)
        rec["toxic"] = score >= cfg.threshold
        if rec["toxic"]:
            report.tag("toxic")
            if cfg.drop_toxic:
                report.drop("toxic")
                continue
        kept.append(rec)
    report.kept = len(kept)
    return kept, report
