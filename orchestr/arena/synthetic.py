"""Synthetic arena data from known model strengths: battles for checking the rating methods,
and whole web-UI log folders (written with the real `ConvLogWriter`) for demos and tests."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import numpy as np

from orchestr.arena.logs import ArenaLine, ChatLine, ConvLogWriter, ConvState

VOTE_OF_WINNER = {
    "model_a": "leftvote",
    "model_b": "rightvote",
    "tie": "tievote",
    "tie (bothbad)": "bothbad_vote",
}


def win_probability(r_a: float, r_b: float, scale: float = 400.0, base: float = 10.0) -> float:
    return 1.0 / (1.0 + base ** ((r_b - r_a) / scale))


def simulate_battles(
    true_ratings: dict[str, float],
    n: int,
    seed: int = 0,
    tie_prob: float = 0.0,
    start_tstamp: float = 1_700_000_000.0,
) -> list[dict[str, Any]]:
    """`n` battles between uniformly drawn distinct pairs; A wins with the Elo/BT probability.
    With `tie_prob`, that share of battles are ties regardless of strength."""
    rng = np.random.default_rng(seed)
    models = list(true_ratings)
    out = []
    for i in range(n):
        a, b = rng.choice(len(models), size=2, replace=False)
        ma, mb = models[a], models[b]
        if rng.random() < tie_prob:
            winner = "tie" if rng.random() < 0.5 else "tie (bothbad)"
        else:
            winner = (
                "model_a" if rng.random() < win_probability(true_ratings[ma], true_ratings[mb]) else "model_b"
            )
        out.append(
            {"model_a": ma, "model_b": mb, "winner": winner, "anony": True, "tstamp": start_tstamp + i}
        )
    return out


def _state(model: str, turns: list[tuple[str, str]], conv_id: str | None = None) -> ConvState:
    messages: list[list[str | None]] = []
    for user, reply in turns:
        messages += [["user", user], ["assistant", reply]]
    return ConvState(conv_id=conv_id or uuid.uuid4().hex, model_name=model, messages=messages, offset=0)


def write_arena_logs(
    log_dir: str | os.PathLike,
    battles: list[dict[str, Any]],
    ip_pool: int = 20,
    with_chat_lines: bool = True,
    seed: int = 0,
) -> ConvLogWriter:
    """Write each battle as the web UI would: a chat line per side, then the vote line."""
    rng = np.random.default_rng(seed)
    writer = ConvLogWriter(log_dir)
    for i, b in enumerate(battles):
        ts = float(b.get("tstamp", time.time()))
        question = f"Question {i}: what is {i} plus {i + 1}?"
        sides = [(b["model_a"], f"It is {2 * i + 1}."), (b["model_b"], f"The sum is {2 * i + 1}.")]
        states = [_state(m, [(question, reply)]) for m, reply in sides]
        ip = f"ip-{int(rng.integers(ip_pool))}"
        if with_chat_lines:
            for (model, _), state in zip(sides, states, strict=True):
                writer.write(
                    ChatLine(
                        tstamp=ts - 0.5,
                        model=model,
                        gen_params={"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 256},
                        start=ts - 2.0,
                        finish=ts - 0.5,
                        state=state,
                        ip=ip,
                    )
                )
        writer.write(
            ArenaLine.vote(VOTE_OF_WINNER[b["winner"]], states, bool(b.get("anony", True)), tstamp=ts, ip=ip)
        )
    return writer
