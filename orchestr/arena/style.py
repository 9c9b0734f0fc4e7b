"""Style features of a battle's answers (FastChat's `conv_metadata`) and their model-level contrasts.

FastChat's style control explains each vote by the two models' strengths *and* by how the answers
differ in length, markdown headers, list items and bold spans. The per-battle metadata carries the
counts of both sides with FastChat's key names; the features are FastChat's: each count difference
divided by (sum + 1), then standardised across the battles.

Token counts are approximate (words and punctuation marks; FastChat counts tiktoken tokens): only
the normalised *difference* enters the fit, so the approximation scales out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")
_HEADER = re.compile(r"^(#{1,6})\s", re.MULTILINE)
_ORDERED = re.compile(r"^\s*\d+\.\s", re.MULTILINE)
_UNORDERED = re.compile(r"^\s*[-*+]\s", re.MULTILINE)
_BOLD_STARS = re.compile(r"\*\*[^*\n]+\*\*")
_BOLD_UNDER = re.compile(r"__[^_\n]+__")
_CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)  # markdown inside code is not style

# (metadata key for side A, for side B): the four features, in FastChat's order.
STYLE_KEYS = [
    ("sum_assistant_a_tokens", "sum_assistant_b_tokens"),
    ("header_count_a", "header_count_b"),
    ("list_count_a", "list_count_b"),
    ("bold_count_a", "bold_count_b"),
]
FEATURE_NAMES = ["length", "headers", "lists", "bold"]


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text or ""))


def markdown_counts(text: str) -> dict[str, dict[str, int]]:
    text = _CODE_BLOCK.sub("", text or "")
    headers = {f"h{i}": 0 for i in range(1, 7)}
    for m in _HEADER.findall(text):
        headers[f"h{len(m)}"] += 1
    return {
        "header_count": headers,
        "list_count": {"ordered": len(_ORDERED.findall(text)), "unordered": len(_UNORDERED.findall(text))},
        "bold_count": {"**": len(_BOLD_STARS.findall(text)), "__": len(_BOLD_UNDER.findall(text))},
    }


def _side(conv: Sequence[dict[str, Any]], role: str) -> list[str]:
    return [m.get("content") or "" for m in conv if m.get("role") == role]


def conv_metadata(conv_a: Sequence[dict[str, Any]], conv_b: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """FastChat's per-battle metadata, computed from the two OpenAI-format conversations."""
    meta: dict[str, Any] = {
        "sum_user_tokens": sum(count_tokens(t) for t in _side(conv_a, "user")),
        "turns": len(_side(conv_a, "user")),
    }
    for tag, conv in (("a", conv_a), ("b", conv_b)):
        answers = _side(conv, "assistant")
        meta[f"sum_assistant_{tag}_tokens"] = sum(count_tokens(t) for t in answers)
        md = markdown_counts("\n".join(answers))
        for key, counts in md.items():
            meta[f"{key}_{tag}"] = counts
    return meta


def _total(value: Any) -> float:
    return float(sum(value.values())) if isinstance(value, dict) else float(value or 0)


def style_features(metadata: Sequence[dict[str, Any]]) -> np.ndarray:
    """(n battles, 4) standardised features: (a - b) / (a + b + 1) per style element."""
    a = np.array([[_total(m.get(ka)) for ka, _ in STYLE_KEYS] for m in metadata], dtype=np.float64)
    b = np.array([[_total(m.get(kb)) for _, kb in STYLE_KEYS] for m in metadata], dtype=np.float64)
    diff = (a - b) / (a + b + 1.0)
    if len(diff) == 0:
        return diff.reshape(0, len(STYLE_KEYS))
    std = diff.std(axis=0)
    std[std == 0] = 1.0  # an element nobody used carries no information (all zeros after centring)
    return (diff - diff.mean(axis=0)) / std
