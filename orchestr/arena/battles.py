"""Arena vote lines -> FastChat clean-battle records, with the filters of `clean.battles`.

A battle record: ``question_id, model_a, model_b, winner (model_a | model_b | tie | tie (bothbad)),
judge (hashed), conversation_a, conversation_b (OpenAI format), turn, anony, language, tstamp``.
`mode=simple` drops the conversations (FastChat's `clean_battle_<date>.json`); `mode=conv_release`
keeps them and only anonymous battles (FastChat's `clean_battle_conv_<date>.json`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from orchestr.arena.language import detect_language
from orchestr.arena.logs import (
    BATTLE_VOTE_TYPES,
    ReadStats,
    find_log_files,
    hash_ip,
    in_date_range,
    read_log_lines,
)
from orchestr.arena.records import StepReport, to_openai_format
from orchestr.arena.style import conv_metadata

WINNER = {
    "leftvote": "model_a",
    "rightvote": "model_b",
    "tievote": "tie",
    "bothbad_vote": "tie (bothbad)",
}
MODES = ("simple", "conv_release")


def _strip_html(name: Any) -> Any:
    # Old FastChat logs carry revealed names as "<h3>Model A: name</h3>\n".
    if isinstance(name, str) and name.startswith("<h3>"):
        return name[name.find(": ") + 2 : -len("</h3>\n")]
    return name


def _resolve_models(row: dict[str, Any]) -> tuple[list[str], bool] | None:
    """(real names A, B; anonymous?) or None when the line cannot name both sides."""
    public = [_strip_html(m) for m in row["models"]]
    hidden = [s.get("model_name") for s in row["states"]]
    if hidden[0] is None or hidden[1] is None:
        hidden = public
    if "anony" in row:  # our logs say it outright
        anony = bool(row["anony"])
        names = hidden
        if not anony and public != hidden:
            return None
    else:  # FastChat's logs: hidden names on screen mean a blind battle
        if (public[0] == "") != (public[1] == ""):
            return None
        anony = public[0] in ("", "Model A")
        names = hidden if anony else public
        if not anony and public != hidden:
            return None
    if not all(isinstance(n, str) and n for n in names):
        return None
    return names, anony


def _conversation(state: dict[str, Any]) -> list[list[Any]]:
    return list(state.get("messages") or [])[int(state.get("offset") or 0) :]


def _has_empty_turn(state: dict[str, Any]) -> bool:
    msgs = _conversation(state)
    if not msgs:
        return True
    return any(not (isinstance(m[1], str) and m[1].strip()) for m in msgs)


def _leaks_identity(states: list[dict[str, Any]], words: list[str]) -> bool:
    """Whether any of the (lower-case) strings occurs in either side's conversation."""
    text = "\n".join(m[1].lower() for s in states for m in _conversation(s) if isinstance(m[1], str))
    return any(w in text for w in words)


def _pair_key(states: list[dict[str, Any]]) -> tuple[Any, Any]:
    return (states[0].get("conv_id"), states[1].get("conv_id"))


def battles_from_rows(rows: Iterable[dict[str, Any]], cfg: Any, report: StepReport) -> list[dict[str, Any]]:
    """The filters of `clean.battles` (cfg) over raw arena lines (votes and flags)."""
    mode = cfg.mode
    if mode not in MODES:
        raise ValueError(f"clean.battles.mode={mode!r}: expected one of {', '.join(MODES)}")
    anony_only = bool(cfg.anony_only) or mode == "conv_release"
    words = [w.lower() for w in cfg.identity_words]
    errors = [w.lower() for w in cfg.error_markers]
    exclude = set(cfg.exclude_models)

    rows = list(rows)
    # A flag on a battle (say "it said it is llama") marks the pair, whenever it came.
    flagged = {
        _pair_key(r["states"]) for r in rows if r.get("type") == "flag" and len(r.get("states") or []) == 2
    }
    battles = []
    for row in tqdm(rows, desc="battles", unit="line", disable=len(rows) < 5000):
        if row.get("type") not in WINNER:
            continue
        report.read += 1
        states = row.get("states")
        if (
            not isinstance(row.get("models"), list)
            or not isinstance(states, list)
            or len(states) != 2
            or len(row["models"]) != 2
        ):
            report.drop("invalid")
            continue
        if not in_date_range(float(row.get("tstamp", 0)), cfg.start_date, cfg.end_date):
            report.drop("out_of_date_range")
            continue
        resolved = _resolve_models(row)
        if resolved is None:
            report.drop("invalid")
            continue
        models, anony = resolved
        if anony_only and not anony:
            report.drop("not_anony")
            continue
        if exclude.intersection(models):
            report.drop("excluded_model")
            continue
        if any(not _conversation(s) for s in states) or (
            cfg.drop_empty_turns and any(_has_empty_turn(s) for s in states)
        ):
            report.drop("empty_turn")
            continue
        if _leaks_identity(states, errors):
            report.drop("error_reply")
            continue
        # Named battles show the names anyway; only a blind vote is spoiled by a leak.
        if anony and cfg.drop_identity_leak and _leaks_identity(states, words):
            report.drop("identity_leak")
            continue
        if anony and cfg.drop_flagged and _pair_key(states) in flagged:
            report.drop("flagged")
            continue
        conv_a = to_openai_format(_conversation(states[0]))
        conv_b = to_openai_format(_conversation(states[1]))
        ip_hash = hash_ip(row.get("ip"), cfg.judge_salt)
        battles.append(
            {
                "question_id": states[0].get("conv_id"),
                "model_a": models[0],
                "model_b": models[1],
                "winner": WINNER[row["type"]],
                "judge": f"arena_user_{ip_hash or 'unknown'}",
                "conversation_a": conv_a,
                "conversation_b": conv_b,
                "turn": len(conv_a) // 2,
                "anony": anony,
                "language": detect_language(conv_a[0]["content"] if conv_a else ""),
                "tstamp": row.get("tstamp"),
                # FastChat's newer records carry this: style control and category leaderboards use it
                "conv_metadata": conv_metadata(conv_a, conv_b),
                "_pair": (*_pair_key(states), len(conv_a)),
            }
        )

    battles.sort(key=lambda b: b["tstamp"])
    if cfg.dedupe:
        # A double click, or a re-vote on the same screen: the last vote on a (pair, turn) stands.
        seen: set[Any] = set()
        unique = []
        for b in reversed(battles):
            if b["_pair"] in seen:
                report.drop("duplicate")
                continue
            seen.add(b["_pair"])
            unique.append(b)
        battles = unique[::-1]
    if cfg.max_num is not None and len(battles) > cfg.max_num:
        report.drop("over_max_num", len(battles) - max(cfg.max_num, 0))
        battles = battles[len(battles) - max(cfg.max_num, 0) :]
    for b in battles:
        del b["_pair"]
        if mode == "simple":
            for key in ("conversation_a", "conversation_b", "question_id"):
                del b[key]
    report.kept = len(battles)
    return battles


def clean_battles(cfg: Any, log_dirs: list[str] | None = None) -> tuple[list[dict[str, Any]], StepReport]:
    """Read the day files named by `cfg` (or `log_dirs`) and clean their votes."""
    files = find_log_files(
        log_dirs if log_dirs is not None else list(cfg.log_dirs),
        cfg.start_date,
        cfg.end_date,
        cfg.max_num_files,
    )
    report = StepReport("battles")
    stats = ReadStats()
    rows = read_log_lines(files, (*BATTLE_VOTE_TYPES, "flag"), stats)
    battles = battles_from_rows(rows, cfg, report)
    if stats.malformed:  # a torn line may have been a vote: counted as read and dropped, and located
        report.read += stats.malformed
        report.drop("malformed_line", stats.malformed)
        report.notes.append(stats.describe())
    return battles, report


def battle_summary(battles: list[dict[str, Any]]) -> str:
    models = sorted({b["model_a"] for b in battles} | {b["model_b"] for b in battles})
    n_anony = sum(1 for b in battles if b["anony"])
    return f"#battles: {len(battles)}, #anony: {n_anony}, #models: {len(models)} {models}"
