"""The battles' `language` tag: script-based for non-Latin text, function words for Latin."""

from __future__ import annotations

import pytest

from orchestr.arena.language import detect_language


@pytest.mark.parametrize(
    "text,lang",
    [
        ("How do I sort a list in Python?", "English"),
        ("¿Cómo está el clima hoy en la ciudad?", "Spanish"),
        ("Comment est-ce que je peux apprendre le français?", "French"),
        ("Wie ist das Wetter in Berlin und was kann ich tun?", "German"),
        ("Você pode me ajudar com uma pergunta? Não sei como fazer.", "Portuguese"),
        ("Come posso imparare l'italiano? Non è facile.", "Italian"),
        ("请用中文解释一下量子计算", "Chinese"),
        ("日本語で説明してください", "Japanese"),
        ("한국어로 설명해 주세요", "Korean"),
        ("Расскажи мне о погоде", "Russian"),
        ("ما هو الطقس اليوم؟", "Arabic"),
        ("def f(x): return x", "English"),
        ("", "unknown"),
        ("12345 !!!", "unknown"),
    ],
)
def test_detect_language(text, lang):
    assert detect_language(text) == lang
