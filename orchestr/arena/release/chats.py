"""All logged conversations, one record per conversation (FastChat's clean_chat_data).

Record: ``conversation_id, model, conversation (OpenAI format), turn, language, user_id (hashed),
tstamp``. A conversation is logged again at every turn; the last (longest) line of it is kept.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from orchestr.arena.language import detect_language
from orchestr.arena.logs import ALL_TYPES, ReadStats, find_log_files, hash_ip, in_date_range, read_log_lines
from orchestr.arena.records import StepReport, to_openai_format

NETWORK_ERROR = "network error due to high traffic"


def _states(row: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(model, state) of each conversation a line carries: one for chat lines, two for arena lines."""
    if isinstance(row.get("state"), dict):
        return [(row.get("model") or row["state"].get("model_name"), row["state"])]
    states = row.get("states")
    if isinstance(states, list):
        return [(s.get("model_name"), s) for s in states if isinstance(s, dict)]
    return []


def gather_chats(cfg: Any) -> tuple[list[dict[str, Any]], StepReport]:
    unknown = set(cfg.types) - set(ALL_TYPES)
    if unknown:
        raise ValueError(f"clean.chats.types: unknown line types {sorted(unknown)}; known: {list(ALL_TYPES)}")
    files = find_log_files(list(cfg.log_dirs), cfg.start_date, cfg.end_date, cfg.max_num_files)
    report = StepReport("chats")
    stats = ReadStats()
    chats: list[dict[str, Any]] = []
    for row in tqdm(read_log_lines(files, cfg.types, stats), desc="chats", unit="line", mininterval=1.0):
        if not in_date_range(float(row.get("tstamp", 0)), cfg.start_date, cfg.end_date):
            report.read += 1
            report.drop("out_of_date_range")
            continue
        for model, state in _states(row) or [(None, {})]:
            report.read += 1
            conv_id = state.get("conv_id")
            if not conv_id or not isinstance(model, str) or not model:
                report.drop("invalid")
                continue
            msgs = list(state.get("messages") or [])[int(state.get("offset") or 0) :]
            conversation = to_openai_format(msgs)
            if not conversation or not all(isinstance(m["content"], str) for m in conversation):
                report.drop("invalid")
                continue
            if (
                cfg.drop_network_error
                and NETWORK_ERROR in "".join(m["content"] for m in conversation).lower()
            ):
                report.drop("network_error")
                continue
            chats.append(
                {
                    "conversation_id": conv_id,
                    "model": model,
                    "conversation": conversation,
                    "turn": len(conversation) // 2,
                    "language": detect_language(conversation[0]["content"]),
                    "user_id": f"arena_user_{hash_ip(row.get('ip'), cfg.judge_salt) or 'unknown'}",
                    "tstamp": row.get("tstamp"),
                }
            )
    if stats.malformed:
        report.drop("malformed_line", stats.malformed)
    chats.sort(key=lambda c: c["tstamp"])
    latest: dict[str, dict[str, Any]] = {}
    for c in chats:  # later lines of a conversation supersede earlier ones
        if c["conversation_id"] in latest:
            report.drop("earlier_turn_of_same_conversation")
        latest[c["conversation_id"]] = c
    out = sorted(latest.values(), key=lambda c: c["tstamp"])
    report.kept = len(out)
    return out, report
