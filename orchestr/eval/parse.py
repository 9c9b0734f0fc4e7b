"""Reading the verdict out of a judge's free text, tolerating sloppy and adversarial judges.

Single grading wants "[[8]]", pairwise wants "[[A]]" / "[[B]]" / "[[C]]". Judges echo the instructions,
add markdown, write "8/10" or "[[ B ]]", or give several verdicts; the *last* verdict wins (the final
one follows the explanation), quoted format instructions are not verdicts, and anything unreadable is
an error (score -1 / winner "error") rather than an exception.
"""

from __future__ import annotations

import re

_NUM = r"(\d+(?:\.\d+)?)"
_OUT_OF = r"(?:\s*(?:/|out\s+of)\s*10(?:\.0+)?)?"
_SCORE_PATTERNS = [
    re.compile(r"\[\[\s*\**\s*" + _NUM + _OUT_OF + r"\s*\**\s*\]\]"),  # [[8]], [[ 7.5 ]], [[8/10]]
    re.compile(r"(?<!\[)\[\s*" + _NUM + _OUT_OF + r"\s*\](?!\])"),  # FastChat's fallback: [8]
    re.compile(r"\b(?:rating|score)\s*(?:is|of|:|=)?\s*[*_]*\s*" + _NUM + _OUT_OF, re.IGNORECASE),
]
# A verdict token that is part of quoted instructions ("[[A]]" if assistant A is better) is not a verdict.
_INSTRUCTION_ECHO = re.compile(r"\"?\[\[\s*[ABC]\s*\]\]\"?\s*(?:if|for|when|means)\b", re.IGNORECASE)
_VERDICT_PATTERNS = [
    re.compile(r"\[\[\s*\**\s*([ABC])\s*\**\s*\]\]", re.IGNORECASE),
    re.compile(r"(?<!\[)\[\s*([ABC])\s*\](?!\])"),
    # words case-insensitive, the letter not: "the winner is a tie" must not read as A
    re.compile(r"\b(?i:final\s+verdict|verdict|winner)\s*(?i:is|:)?\s*[*_\"']*\s*(?i:assistant\s+)?([ABC])\b"),
]
_TIE_WORDS = re.compile(r"\b(?:final\s+verdict|verdict|winner)\s*(?:is|:)?\s*[*_\"']*\s*(?:a\s+)?tie\b", re.IGNORECASE)

# The format example from the instructions ('for example: "Rating: [[5]]"') is not a score.
_SCORE_ECHO = re.compile(r"\bexample\s*:?\s*[\"']?\s*(?:(?:rating|score)\s*:?\s*)?\[\[\s*\d+(?:\.\d+)?\s*\]\]", re.IGNORECASE)

MIN_SCORE, MAX_SCORE = 1.0, 10.0


def parse_score(judgment: str | None) -> float:
    """The 1-10 rating in a single-grading judgment, or -1 when there is none (or it is out of range)."""
    if not judgment:
        return -1
    text = _SCORE_ECHO.sub(" ", judgment.replace("[[rating]]", ""))  # echoed format text carries no score
    for i, pattern in enumerate(_SCORE_PATTERNS):
        found = pattern.findall(text)
        if i == 1 and len(set(found)) > 1:
            continue  # "[1] ... [2] ... [3]" is a numbered list, not a rating
        if found:
            value = float(found[-1])
            return value if MIN_SCORE <= value <= MAX_SCORE else -1
    return -1


def parse_verdict(judgment: str | None) -> str:
    """'A', 'B', 'tie' or 'error' from a pairwise judgment."""
    if not judgment:
        return "error"
    text = _INSTRUCTION_ECHO.sub(" ", judgment)
    for pattern in _VERDICT_PATTERNS:
        found = pattern.findall(text)
        if found:
            letter = found[-1].upper()
            return "tie" if letter == "C" else letter
    if _TIE_WORDS.search(text):
        return "tie"
    return "error"


# arena-hard's five labels (and the mirrored spellings it accepts), as the judge writes them.
_LABEL = re.compile(r"\[\[\s*([AB])\s*(>>|>|=|<<|<)\s*([AB])\s*\]\]")
_CANONICAL = {"A>>B": "A>>B", "A>B": "A>B", "A=B": "A=B", "B=A": "A=B", "B>A": "B>A", "B>>A": "B>>A",
              "A<B": "B>A", "A<<B": "B>>A", "B<A": "A>B", "B<<A": "A>>B"}  # fmt: skip
LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")


def parse_label(judgment: str | None) -> str | None:
    """The arena-hard verdict label (`A>>B`, `A>B`, `A=B`, `B>A`, `B>>A`), or None when there is none
    or the judgment gives different ones (as arena-hard-auto reads them)."""
    if not judgment:
        return None
    found = {_CANONICAL.get(a + op + b) for a, op, b in _LABEL.findall(judgment) if a != b}
    found.discard(None)
    return found.pop() if len(found) == 1 else None


# Structured verdicts: the judge answers with one JSON object under a JSON-schema constraint (the
# in-process judge's sampler is constrained to it, so every verdict parses).
_SCHEMA_FIELD = {"single": "rating", "pair": "verdict", "arena-hard": "verdict"}
_SCHEMA_VALUES: dict[str, list] = {"single": list(range(1, 11)), "pair": ["A", "B", "tie"], "arena-hard": list(LABELS)}
_SCHEMA_HINT = {
    "single": 'Reply with only a JSON object {"rating": N}, N your score from 1 to 10.',
    "pair": 'Reply with only a JSON object {"verdict": V}, V one of "A", "B" or "tie".',
    "arena-hard": 'Reply with only a JSON object {"verdict": V}, V one of "A>>B", "A>B", "A=B", "B>A", "B>>A".',
}


def verdict_schema(kind: str) -> dict:
    field = _SCHEMA_FIELD[kind]
    return {"type": "object", "properties": {field: {"enum": _SCHEMA_VALUES[kind]}}, "required": [field],
            "additionalProperties": False}  # fmt: skip


def schema_instruction(kind: str) -> str:
    return _SCHEMA_HINT[kind]


def parse_structured(judgment: str | None, kind: str):
    """The verdict of a structured judgment (rating, 'A'/'B'/'tie', or a label), or None."""
    import json

    try:
        obj = json.loads(judgment or "")
    except json.JSONDecodeError:
        return None
    value = obj.get(_SCHEMA_FIELD[kind]) if isinstance(obj, dict) else None
    return value if value in _SCHEMA_VALUES[kind] else None
