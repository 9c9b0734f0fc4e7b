"""Limits on what a user may send, checked before anything reaches a model."""

from __future__ import annotations

from orchestr.services.web.conversation import Conversation


def input_problem(text: str, convs: list[Conversation], max_turns: int, max_input_chars: int) -> str | None:
    """A visible explanation when the message must not be sent, else None."""
    if not text.strip():
        return "Type a message first."
    if len(text) > max_input_chars:
        return (f"⚠️ Your message is too long ({len(text):,} characters; the limit is {max_input_chars:,}). "
                "Please shorten it.")
    if any(c.user_turns() >= max_turns for c in convs):
        return (f"⚠️ This conversation reached the limit of {max_turns} turns. "
                "Clear the history to start a new one.")
    return None
