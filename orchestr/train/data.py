"""Training data: FastChat/OpenAI conversation files -> chat-template token sequences with
assistant-only labels, and arena battles -> DPO preference pairs.

Accepted conversation records (JSON list or JSONL), detected per record:

* ShareGPT (FastChat's training format): ``{"id", "conversations": [{"from": "human"|"gpt"|"system", "value"}]}``
* OpenAI: ``{"messages": [{"role", "content"}]}``
* orchestr's release records (`orchestr clean step=release`): ``{"conversation": [{"role", "content"}]}``

A conversation is rendered with the tokenizer's chat template; the label of every token outside an
assistant message (system, user, the template's role headers) is -100, so the loss falls on the
assistant's words and its end-of-turn marker only (FastChat's ``preprocess`` masking).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestr.arena.records import read_records
from orchestr.errors import UserError

IGNORE_INDEX = -100
# ShareGPT speaker -> OpenAI role (FastChat maps human/gpt; other chat-bot names are replies too)
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
    "system": "system",
}  # fmt: skip


class DataError(UserError, ValueError):
    """A training data file or key is unusable; the message names it."""


@dataclass
class DataReport:
    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def __str__(self) -> str:
        drops = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        return f"read {self.read}, kept {self.kept}, dropped {drops}"


# --------------------------------------------------------------------------- reading


def read_json_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON list or JSONL file (the arena steps' reader), errors naming ``train.data``."""
    try:
        return read_records(path)
    except FileNotFoundError:
        raise DataError(f"train.data={str(path)!r}: no such file") from None
    except ValueError as e:  # not valid JSON / JSONL, or not a list
        raise DataError(f"train.data={str(path)!r}: {e}") from None


def to_messages(record: dict[str, Any]) -> list[dict[str, str]] | None:
    """A record's conversation as OpenAI messages, or None when it has no usable one."""
    if isinstance(record.get("conversations"), list):
        msgs = []
        for turn in record["conversations"]:
            if not isinstance(turn, dict):
                return None
            role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role is None or not isinstance(turn.get("value"), str):
                return None
            msgs.append({"role": role, "content": turn["value"]})
    else:
        raw = record.get("messages", record.get("conversation"))
        if not isinstance(raw, list):
            return None
        msgs = []
        for m in raw:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
                "system", "user", "assistant"
            ):
                return None
            msgs.append({"role": m["role"], "content": m["content"]})
    return msgs


def normalise(msgs: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """Optional leading system message, then user/assistant alternating, ending on an assistant
    reply. FastChat skips a first turn that is not the human's; a dangling user turn is cut."""
    system = [msgs[0]] if msgs and msgs[0]["role"] == "system" else []
    rest = msgs[len(system) :]
    if rest and rest[0]["role"] != "user":
        rest = rest[1:]
    for i, m in enumerate(rest):
        if m["role"] != ("user", "assistant")[i % 2]:
            return None
    if rest and rest[-1]["role"] == "user":
        rest = rest[:-1]
    if not rest:
        return None
    return system + rest


def load_conversations(path: str, report: DataReport) -> list[list[dict[str, str]]]:
    out = []
    for record in read_json_records(path):
        report.read += 1
        msgs = to_messages(record) if isinstance(record, dict) else None
        if msgs is None:
            report.drop("unknown_format")
            continue
        msgs = normalise(msgs)
        if msgs is None:
            report.drop("not_alternating_or_empty")
            continue
        out.append(msgs)
    if report.read and not out:
        raise DataError(
            f"train.data={path!r}: no record has a conversation (expected ShareGPT `conversations`, "
            "OpenAI `messages` or release `conversation`)"
        )
    return out


# --------------------------------------------------------------------------- rendering and masking


def render(tokenizer: Any, msgs: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, msgs: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant message in it (its
    words and the template's end-of-turn text), found by rendering growing prefixes."""
    text = render(tokenizer, msgs)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, msgs[:i], generation_prompt=True)
        upto = render(tokenizer, msgs[: i + 1])
        if not (text.startswith(upto) and upto.startswith(before)):
            raise DataError(
                "the model's chat template does not render conversations prefix by prefix; "
                "cannot find the assistant turns to train on"
            )
        spans.append((len(before), len(upto)))
    return text, spans


def tokenize_conversation(tokenizer: Any, msgs: list[dict[str, str]]) -> dict[str, list[int]]:
    """``input_ids`` and ``assistant_masks`` (1 on assistant tokens) of one rendered conversation."""
    text, spans = assistant_spans(tokenizer, msgs)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = []
    for start, end in enc["offset_mapping"]:
        mid = start if end == start else end - 1  # a token belongs to the span its last char is in
        mask.append(int(any(a <= mid < b for a, b in spans)))
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": mask}


def split_long_conversation(
    tokenizer: Any, msgs: list[dict[str, str]], max_length: int
) -> list[list[dict[str, str]]]:
    """Cut at round boundaries (a user turn and its reply) into pieces whose rendering fits
    ``max_length`` tokens; each piece keeps the system message (FastChat's split_long_conversation).
    A single round longer than the limit is its own piece (truncated later)."""
    system = [msgs[0]] if msgs[0]["role"] == "system" else []
    body = msgs[len(system) :]
    rounds = [body[i : i + 2] for i in range(0, len(body), 2)]
    pieces: list[list[dict[str, str]]] = []
    current: list[dict[str, str]] = []
    for rnd in rounds:
        candidate = system + current + rnd
        if current and len(tokenizer(render(tokenizer, candidate), add_special_tokens=False)["input_ids"]) > max_length:
            pieces.append(system + current)
            current = list(rnd)
        else:
            current = current + rnd
    if current:
        pieces.append(system + current)
    return pieces


def sft_examples(
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    max_length: int,
    long_conversations: str,
    report: DataReport,
    system_prompt: str | None = None,
) -> list[dict[str, list[int]]]:
    if long_conversations not in ("split", "truncate"):
        raise DataError(f"train.data_opts.long_conversations={long_conversations!r}: expected split or truncate")
    out = []
    for msgs in conversations:
        if system_prompt is not None:
            msgs = [{"role": "system", "content": system_prompt}] + [m for m in msgs if m["role"] != "system"]
        pieces = split_long_conversation(tokenizer, msgs, max_length) if long_conversations == "split" else [msgs]
        for piece in pieces:
            ex = tokenize_conversation(tokenizer, piece)
            ex = {k: v[:max_length] for k, v in ex.items()}  # keep the start, as FastChat truncates
            if not any(ex["assistant_masks"]):
                report.drop("no_assistant_token_within_max_length")
                continue
            out.append(ex)
    report.kept = len(out)
    return out


def held_out_split(examples: list[Any], fraction: float, cap: int | None, seed: int) -> tuple[list[Any], list[Any]]:
    """Shuffle with ``seed``; the first ``fraction`` (at least one, at most ``cap``) is held out."""
    if not 0 <= fraction < 1:
        raise DataError(f"train.data_opts.eval_fraction={fraction}: expected 0 <= x < 1")
    items = list(examples)
    random.Random(seed).shuffle(items)
    if fraction == 0 or len(items) < 2:
        return items, []
    n = max(1, int(round(len(items) * fraction)))
    if cap is not None:
        n = min(n, cap)
    return items[n:], items[:n]


# --------------------------------------------------------------------------- preference pairs


TIE_POLICIES = ("drop", "both")


def _split_prompt(conv_a: list[dict[str, str]], conv_b: list[dict[str, str]]) -> int:
    """Length of the shared history the two sides answer (it ends on a user message)."""
    n = 0
    while n < min(len(conv_a), len(conv_b)) and conv_a[n] == conv_b[n]:
        n += 1
    while n > 0 and conv_a[n - 1]["role"] != "user":
        n -= 1
    return n


def pairs_from_battles(battles: list[dict[str, Any]], ties: str, bothbad: str, report: DataReport) -> list[dict[str, Any]]:
    """Clean battles with conversations -> TRL conversational preference pairs.

    ``prompt``: the messages both sides share (up to the first user turn after which their
    replies differ); ``chosen``/``rejected``: the rest of the winner's / loser's conversation.
    A tie or both-bad vote is dropped, or (policy ``both``) kept as two mirrored pairs."""
    for key, value in (("ties", ties), ("bothbad", bothbad)):
        if value not in TIE_POLICIES:
            raise DataError(f"train.data_opts.{key}={value!r}: expected one of {', '.join(TIE_POLICIES)}")
    pairs = []
    for b in battles:
        report.read += 1
        conv_a, conv_b = b.get("conversation_a"), b.get("conversation_b")
        if not conv_a or not conv_b:
            report.drop("no_conversation")
            continue
        winner = b.get("winner")
        if winner == "model_a":
            orders = [("a", "b")]
        elif winner == "model_b":
            orders = [("b", "a")]
        elif winner in ("tie", "tie (bothbad)"):
            policy = ties if winner == "tie" else bothbad
            if policy == "drop":
                report.drop("tie" if winner == "tie" else "bothbad")
                continue
            orders = [("a", "b"), ("b", "a")]
        else:
            report.drop("invalid_winner")
            continue
        n = _split_prompt(conv_a, conv_b)
        if n == 0:
            report.drop("no_shared_prompt")
            continue
        sides = {"a": (conv_a, b.get("model_a")), "b": (conv_b, b.get("model_b"))}
        for win, lose in orders:
            (chosen, m_chosen), (rejected, m_rejected) = sides[win], sides[lose]
            pairs.append(
                {
                    "prompt": conv_a[:n],
                    "chosen": chosen[n:],
                    "rejected": rejected[n:],
                    "question_id": b.get("question_id"),
                    "model_chosen": m_chosen,
                    "model_rejected": m_rejected,
                    "winner": winner,
                    "tstamp": b.get("tstamp"),
                }
            )
    report.kept = len(pairs)
    return pairs


def load_pairs(path: str, opts: Any, battles_cfg: Any, report: DataReport) -> list[dict[str, Any]]:
    """Preference pairs from an arena log folder, a clean-battle file, or a pairs file.

    A log folder goes through `orchestr clean`'s battle extraction with the `clean.battles`
    filters (identity leaks, empty replies, double votes, dates, excluded models) in its
    `conv_release` mode, which keeps the conversations of the anonymous battles."""
    p = Path(path).expanduser()
    if p.is_dir():
        from omegaconf import OmegaConf

        from orchestr.arena.battles import clean_battles

        cfg = OmegaConf.create(OmegaConf.to_container(battles_cfg, resolve=False))
        OmegaConf.update(cfg, "mode", "conv_release")
        battles, step = clean_battles(cfg, log_dirs=[str(p)])
        print(f"orchestr train: battles from {p}: read {step.read}, kept {step.kept}, dropped {step.dropped}")
        if step.read == 0:
            raise DataError(f"train.data={path!r}: no arena votes in that folder")
        return pairs_from_battles(battles, opts.ties, opts.bothbad, report)
    records = read_json_records(p)
    if records and all(isinstance(r, dict) and {"prompt", "chosen", "rejected"} <= r.keys() for r in records):
        report.read = report.kept = len(records)
        return records
    if records and all(isinstance(r, dict) and "winner" in r for r in records):
        return pairs_from_battles(records, opts.ties, opts.bothbad, report)
    raise DataError(
        f"train.data={path!r}: expected an arena log folder, clean battles with conversations "
        "(clean.battles.mode=conv_release) or pairs with prompt/chosen/rejected"
    )
