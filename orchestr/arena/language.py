"""A small, dependency-free language guess for the battles' `language` field.

FastChat uses polyglot; a heavy native dependency is not worth it for a per-battle tag, so this
guesses from the Unicode script, and among Latin-script languages from common function words.
It returns FastChat-style English names ("English", "Chinese", ...) or "unknown".
"""

from __future__ import annotations

import re
import unicodedata

# Script prefix of unicodedata.name() -> language (first match wins; kana before CJK ideographs).
_SCRIPTS = [
    ("HIRAGANA", "Japanese"),
    ("KATAKANA", "Japanese"),
    ("HANGUL", "Korean"),
    ("CJK", "Chinese"),
    ("CYRILLIC", "Russian"),
    ("ARABIC", "Arabic"),
    ("HEBREW", "Hebrew"),
    ("GREEK", "Greek"),
    ("THAI", "Thai"),
    ("DEVANAGARI", "Hindi"),
    ("BENGALI", "Bengali"),
    ("TAMIL", "Tamil"),
]

_FUNCTION_WORDS = {
    "English": "the and is are you what how to of in it that this for with can please".split(),
    "Spanish": "el la los las es son que de y en por para una un cómo qué está".split(),
    "French": "le la les est sont que de et en pour une un vous je comment quoi c'est".split(),
    "German": "der die das ist sind und nicht ein eine ich du wie was mit für zu".split(),
    "Portuguese": "o os as é são que de e em para uma um não você como está".split(),
    "Italian": "il lo gli è sono che di e per una un non come cosa sei della".split(),
}
_WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def detect_language(text: str | None) -> str:
    if not text or not text.strip():
        return "unknown"
    counts: dict[str, int] = {}
    latin = 0
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        if name.startswith("LATIN"):
            latin += 1
            continue
        for prefix, lang in _SCRIPTS:
            if name.startswith(prefix):
                counts[lang] = counts.get(lang, 0) + 1
                break
    if counts:
        lang, n = max(counts.items(), key=lambda kv: kv[1])
        # Japanese text mixes kana and kanji: any kana at all decides it.
        if counts.get("Japanese"):
            lang, n = "Japanese", counts["Japanese"] + counts.get("Chinese", 0)
        if n >= latin:
            return lang
    if latin == 0:
        return "unknown"
    words = [w.lower() for w in _WORD_RE.findall(text)]
    scores = {lang: sum(w in vocab for w in words) for lang, vocab in _FUNCTION_WORDS.items()}
    best, score = max(scores.items(), key=lambda kv: kv[1])
    # Ties and no evidence default to English, the common case in arena logs.
    return best if score > scores["English"] else "English"
