"""Agreement between two judges on pairwise votes (FastChat's compute_agreement).

Reads FastChat pairwise judgment files (model_1/model_2/g1_winner/g2_winner) and human vote files
(model_a/model_b/winner, as in MT-bench's human judgments). A judgment counts as a win only when both
answer orders agree, otherwise as a tie. Agreement is reported with ties and without them.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations, product
from pathlib import Path
from typing import Any

import pandas as pd

from orchestr.eval.errors import EvalError
from orchestr.eval.matches import record_turn
from orchestr.eval.records import read_jsonl

Vote = tuple[int, tuple[str, str, str], str]  # turn, (question_id, model_a, model_b) sorted, winner


def judge_label(judge: Any) -> str:
    if isinstance(judge, list | tuple):
        return str(judge[0])
    judge = str(judge)
    if judge.startswith("expert"):
        return "human"  # FastChat pools all experts as one judge "human"
    if judge.startswith("author"):
        return "author"
    return judge


def _flip(winner: str) -> str:
    return {"model_a": "model_b", "model_b": "model_a"}.get(winner, winner)


def record_vote(r: dict) -> tuple[str, str, str] | None:
    """(model_a, model_b, winner) of one record, or None for an errored judgment."""
    if "g1_winner" in r:
        if "error" in (r["g1_winner"], r["g2_winner"]):
            return None
        winner = "tie"
        if r["g1_winner"] == r["g2_winner"] and r["g1_winner"] != "tie":
            winner = "model_a" if r["g1_winner"] == "model_1" else "model_b"
        return r["model_1"], r["model_2"], winner
    if "winner" in r:
        return r["model_a"], r["model_b"], str(r["winner"])
    return None


def load_votes(path: Path, label: str | None = None) -> dict[str, list[Vote]]:
    """judge label -> votes, with each model pair in a canonical order (the winner flipped to match)."""
    if not path.is_file():
        raise EvalError(f"agreement: file not found: {path} (eval.agreement.files)")
    votes: dict[str, list[Vote]] = defaultdict(list)
    for r in read_jsonl(path):
        v = record_vote(r)
        if v is None:
            continue
        a, b, winner = v
        if a > b:
            a, b, winner = b, a, _flip(winner)
        votes[label or judge_label(r.get("judge", path.stem))].append((record_turn(r), (str(r["question_id"]), a, b), winner))
    return votes


def _same(v1: str, v2: str) -> bool:
    return ("tie" in v1 and "tie" in v2) or v1 == v2  # "tie (bothbad)" is a tie too


def agreement(votes1: list[Vote], votes2: list[Vote] | None, turn: int | None, ban_ties: bool) -> tuple[int, int]:
    """(agreeing, compared) vote pairs; votes2 None compares a judge with itself (e.g. human vs human)."""
    def index(votes: list[Vote]) -> dict[tuple, list[str]]:
        out: dict[tuple, list[str]] = defaultdict(list)
        for t, key, winner in votes:
            if turn is None or t == turn:
                out[(t, key)].append(winner)
        return out

    i1 = index(votes1)
    i2 = i1 if votes2 is None else index(votes2)
    agree = total = 0
    for key, w1 in i1.items():
        if key not in i2:
            continue
        pairs = combinations(w1, 2) if votes2 is None else product(w1, i2[key])
        for a, b in pairs:
            if ban_ties and ("tie" in a or "tie" in b):
                continue
            total += 1
            agree += _same(a, b)
    return agree, total


def run_agreement(cfg: Any) -> pd.DataFrame:
    ac = cfg.eval.agreement
    files = [Path(f).expanduser() for f in ac.files]
    judges = list(ac.judges)
    if len(judges) == 2:
        pool: dict[str, list[Vote]] = defaultdict(list)
        for f in files:
            for name, v in load_votes(f).items():
                pool[name] += v
        for name in judges:
            if name not in pool:
                raise EvalError(f"agreement: judge {name!r} not found; the files hold: {', '.join(sorted(pool))}")
        (n1, v1), (n2, v2) = (judges[0], pool[judges[0]]), (judges[1], pool[judges[1]])
    elif len(files) == 2:
        n1, n2 = f"{files[0].stem}", f"{files[1].stem}"
        v1 = [v for vs in load_votes(files[0], n1).values() for v in vs]
        v2 = [v for vs in load_votes(files[1], n2).values() for v in vs]
    else:
        raise EvalError("agreement needs eval.agreement.files=[a.jsonl,b.jsonl], or files plus eval.agreement.judges=[j1,j2]")
    same = n1 == n2
    rows = []
    for turn in [ac.turn] if ac.turn else [1, 2, None]:
        for ban in (False, True):
            agree, total = agreement(v1, None if same else v2, turn, ban)
            rows.append(
                {
                    "turn": turn or "all",
                    "setup": "w/o tie" if ban else "w/ tie",
                    "agree": agree,
                    "compared": total,
                    "agreement": round(agree / total, 4) if total else float("nan"),
                }
            )
    table = pd.DataFrame(rows)
    print(f"\n########## agreement: {n1} vs {n2} ##########")
    print(table.to_string(index=False))
    return table
