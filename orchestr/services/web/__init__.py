"""The Gradio web UI: single-model chat, Chatbot-Arena battles, leaderboard, conversation logs.

Run it with ``python -m orchestr.services.web`` (see ``__main__.py`` for the flags).
"""


def main(argv: list[str] | None = None) -> None:
    from orchestr.services.web.__main__ import main as _main

    _main(argv)
