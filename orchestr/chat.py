"""`orchestr chat`: talk to a model in the terminal (the counterpart of FastChat's serve.cli).

Either load a model here from the config (``orchestr chat model=smollm2-135m``, any Hydra
override) or go through a running API (``orchestr chat --api-base http://localhost:8000/v1
--model smollm2-135m``). Commands: ``!!exit``, ``!!reset``, ``!!remove`` (drop the last turn),
``!!regen``, ``!!save <file>``, ``!!load <file>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestr.chat_backends import ApiBackend, ChatBackendError, LocalBackend
from orchestr.chat_io import ChatIO, make_io

USER, ASSISTANT = "user", "assistant"
HELP = "commands: !!exit  !!reset  !!remove  !!regen  !!save <file>  !!load <file>"


class Conversation:
    """OpenAI-style message list with the system prompt kept apart so resets keep it."""

    def __init__(self, system: str | None = None):
        self.system = system
        self.turns: list[dict] = []

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reset(self) -> None:
        self.turns = []

    def remove_last_turn(self) -> bool:
        """Drop the last user message and the reply to it."""
        while self.turns:
            if self.turns.pop()["role"] == USER:
                return True
        return False

    def to_json(self, model: str) -> dict:
        return {"model": model, "messages": self.messages()}

    @classmethod
    def from_json(cls, data: dict) -> Conversation:
        """Our own format, or FastChat's ``Conversation.dict()`` (``messages`` as [role, text] pairs)."""
        conv = cls(data.get("system_message") or None)
        msgs = data.get("messages")
        if not isinstance(msgs, list):
            raise ValueError("no 'messages' list")
        offset = int(data.get("offset", 0) or 0)
        for i, m in enumerate(msgs):
            if isinstance(m, dict):
                role, content = m.get("role"), m.get("content")
                if role == "system":
                    conv.system = content
                    continue
            elif isinstance(m, list | tuple) and len(m) == 2:
                if i < offset:
                    continue
                role, content = (USER if (i - offset) % 2 == 0 else ASSISTANT), m[1]
            else:
                raise ValueError(f"message {i} is neither an object nor a [role, text] pair")
            if role not in (USER, ASSISTANT) or not isinstance(content, str):
                raise ValueError(f"message {i} has an unknown role or no text")
            conv.turns.append({"role": role, "content": content})
        return conv


def _reply(io: ChatIO, backend, conv: Conversation, args: argparse.Namespace) -> None:
    try:
        text = io.stream_output(
            ASSISTANT, backend.stream(conv.messages(), args.temperature, args.max_new_tokens)
        )
    except KeyboardInterrupt:
        io.info("[interrupted]")
        text = None
    except ChatBackendError as e:
        io.info(f"error: {e}")
        text = None
    if text is None:
        conv.turns.pop()  # forget the unanswered user message
        return
    conv.turns.append({"role": ASSISTANT, "content": text})


def chat_loop(io: ChatIO, backend, model_name: str, args: argparse.Namespace) -> None:
    conv = Conversation(args.system)
    io.info(f"chatting with {model_name} — {HELP}")
    while True:
        try:
            inp = io.prompt_for_input(USER)
        except KeyboardInterrupt:
            inp = None
        if inp is None or inp.strip() == "!!exit":
            io.info("exit...")
            return
        cmd, _, arg = inp.strip().partition(" ")
        arg = arg.strip()
        if not inp.strip():
            continue
        if cmd == "!!reset":
            conv.reset()
            io.info("resetting...")
        elif cmd == "!!remove":
            io.info("removing last message..." if conv.remove_last_turn() else "No messages to remove.")
        elif cmd == "!!regen":
            if conv.turns and conv.turns[-1]["role"] == ASSISTANT:
                conv.turns.pop()
            if not conv.turns or conv.turns[-1]["role"] != USER:
                io.info("No user message to regenerate a reply to.")
                continue
            io.info("regenerating last message...")
            _reply(io, backend, conv, args)
        elif cmd == "!!save":
            if not arg:
                io.info("usage: !!save <filename>")
                continue
            path = Path(arg if arg.endswith(".json") else arg + ".json").expanduser()
            try:
                path.write_text(json.dumps(conv.to_json(model_name), indent=2, ensure_ascii=False) + "\n")
                io.info(f"saving to {path}...")
            except OSError as e:
                io.info(f"cannot save to {path}: {e}")
        elif cmd == "!!load":
            if not arg:
                io.info("usage: !!load <filename>")
                continue
            path = Path(arg).expanduser()
            try:
                conv = Conversation.from_json(json.loads(path.read_text()))
            except (OSError, ValueError) as e:
                io.info(f"cannot load {path}: {e}")
                continue
            io.info(f"loading {path}...")
            for m in conv.turns:
                io.info(f"{m['role']}: {m['content']}")
        elif cmd.startswith("!!"):
            io.info(f"unknown command {cmd}; {HELP}")
        else:
            conv.turns.append({"role": USER, "content": inp})
            _reply(io, backend, conv, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="orchestr chat",
        description="Chat with a model in the terminal, loaded here (Hydra overrides) or through an API.",
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for the local model, e.g. model=smollm2-135m"
    )
    parser.add_argument("--api-base", default=None, help="chat through this OpenAI-compatible API instead")
    parser.add_argument("--model", default=None, help="model name at the API (default: the first it lists)")
    parser.add_argument("--api-key", default=None, help="API key (default: env OPENAI_API_KEY, else EMPTY)")
    parser.add_argument("--style", choices=("simple", "rich"), default="simple")
    parser.add_argument("--multiline", action="store_true", help="multi-line input; Esc+Enter sends")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--system", default=None, help="system prompt")
    args = parser.parse_args(argv)
    if args.temperature < 0:
        parser.error("--temperature must be >= 0")
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be >= 1")

    io = make_io(args.style, args.multiline)
    try:
        if args.api_base:
            if args.overrides:
                parser.error("config overrides apply to a local model; drop them or --api-base")
            backend = ApiBackend(args.api_base, args.model, args.api_key)
            model_name = backend.model
        else:
            if args.model:
                parser.error("--model names a model at an API; for a local model use model=<config name>")
            model_cfg = _compose_model(args.overrides)
            io.info(f"loading {model_cfg.name} from {model_cfg.path}...")
            backend = LocalBackend(model_cfg)
            model_name = model_cfg.name
    except ChatBackendError as e:
        print(f"orchestr chat: {e}", file=sys.stderr)
        return 1
    chat_loop(io, backend, model_name, args)
    return 0


def _compose_model(overrides: list[str]):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from orchestr.config import compose

    try:
        return compose(overrides).model
    except (HydraException, OmegaConfBaseException) as e:
        raise ChatBackendError(f"bad config: {e}") from e


if __name__ == "__main__":
    sys.exit(main())
