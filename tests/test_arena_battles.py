"""Vote logs (written by the same writer the web UI uses) -> clean battles, filter by filter;
the log writer itself; and the web UI's `leaderboard_from_logs` entry point."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from dataclasses import replace

import pytest

from orchestr.arena.battles import clean_battles
from orchestr.arena.logs import (
    ArenaLine,
    ChatLine,
    ChatVoteLine,
    ConvLogWriter,
    ConvState,
    conv_log_path,
    find_log_files,
    read_log_lines,
)
from orchestr.arena.ratings import LEADERBOARD_COLUMNS, leaderboard_from_logs
from orchestr.arena.synthetic import simulate_battles, write_arena_logs
from orchestr.config.clean import BattlesConfig, RatingsConfig

DAY1 = dt.datetime(2024, 5, 1, 12, 0).timestamp()
DAY2 = dt.datetime(2024, 5, 2, 12, 0).timestamp()


def state(
    model: str, reply: str | None, question: str = "Explain rainbows briefly.", conv_id: str | None = None
):
    msgs = [] if reply is None else [["user", question], ["assistant", reply]]
    return ConvState(conv_id=conv_id or uuid.uuid4().hex, model_name=model, messages=msgs)


def vote(ts, type_, a, b, reply_a="Light refracts in droplets.", reply_b="Sunlight splits into colours.",
         anony=True, ip="10.0.0.7", question="Explain rainbows briefly.", conv_ids=(None, None), **kw):  # fmt: skip
    states = [state(a, reply_a, question, conv_ids[0]), state(b, reply_b, question, conv_ids[1])]
    return ArenaLine.vote(type_, states, anony, tstamp=ts, ip=ip, **kw)  # as the web UI writes it


@pytest.fixture
def logs(tmp_path):
    """One of each case the filters must handle, on two days."""
    w = ConvLogWriter(tmp_path / "logs")
    t = DAY1
    w.write(vote(t + 1, "leftvote", "alpha", "beta"))  # kept: alpha wins, anonymous
    w.write(vote(t + 2, "rightvote", "alpha", "gamma", anony=False))  # kept: named
    w.write(vote(t + 3, "tievote", "beta", "gamma", reply_a="As Llama, I think..."))  # leak (anony)
    w.write(vote(t + 4, "bothbad_vote", "beta", "gamma", reply_a="As Llama, I think...", anony=False))  # kept
    flagged = ("c-alpha-5", "c-gamma-5")
    w.write(vote(t + 5, "leftvote", "alpha", "gamma", conv_ids=flagged))  # flagged below
    w.write(vote(t + 6, "flag", "alpha", "gamma", conv_ids=flagged, flag_reason="identity_leak"))
    w.write(vote(t + 7, "leftvote", "alpha", "beta", reply_b=""))  # empty reply
    w.write(ArenaLine(tstamp=t + 8, type="rightvote", models=["alpha", "beta"],
                      states=[state("alpha", None), state("beta", None)], anony=True))  # fmt: skip
    again = ("c-beta-9", "c-alpha-9")
    w.write(vote(t + 9, "leftvote", "beta", "alpha", ip="10.0.0.8", conv_ids=again))  # re-voted below
    w.write(vote(t + 10, "rightvote", "beta", "alpha", ip="10.0.0.8", conv_ids=again))  # this one stands
    w.write(vote(t + 11, "leftvote", "alpha", "beta", reply_a="NETWORK ERROR DUE TO HIGH TRAFFIC."))
    w.write(vote(t + 12, "leftvote", "alpha", "delta"))  # excluded in one test
    # Lines that are not arena votes are ignored by the battles step.
    w.write(ChatLine(tstamp=t + 13, model="alpha", start=t, finish=t + 13, state=state("alpha", "Hi")))
    w.write(ChatVoteLine(tstamp=t + 14, type="upvote", model="alpha", state=state("alpha", "Hi")))
    # Day 2: an older orchestr line (real names in `models`, "anony": true), still read as blind,
    # and a named (side-by-side) vote.
    legacy = vote(
        DAY2, "rightvote", "gamma", "beta", question="¿Qué es un arcoíris? Explícalo, por favor."
    ).model_dump()
    legacy.update(models=["gamma", "beta"], anony=True)
    del legacy["flag_reason"]
    w.write(legacy)
    w.write(vote(DAY2 + 1, "leftvote", "gamma", "beta", reply_a="Ok.", anony=False))
    # A line torn by a crash mid-write.
    with open(conv_log_path(w.log_dir, dt.datetime.fromtimestamp(DAY2)), "a") as f:
        f.write('{"tstamp": 1, "type": "leftv')
    return w.log_dir


def run(log_dir, **kw):
    """Clean with the user-flagged battle dropped (clean.battles.drop_flagged) unless told otherwise."""
    cfg = replace(BattlesConfig(), log_dirs=[str(log_dir)], **{"drop_flagged": True, **kw})
    return clean_battles(cfg)


def test_filters_and_counts(logs):
    battles, report = run(logs)
    pairs = [(b["model_a"], b["model_b"], b["winner"], b["anony"]) for b in battles]
    assert pairs == [
        ("alpha", "beta", "model_a", True),
        ("alpha", "gamma", "model_b", False),
        ("beta", "gamma", "tie (bothbad)", False),
        ("beta", "alpha", "model_b", True),  # the re-vote replaced the first vote
        ("alpha", "delta", "model_a", True),
        ("gamma", "beta", "model_b", True),  # FastChat line: anonymity derived from hidden names
        ("gamma", "beta", "model_a", False),
    ]
    assert report.read == 14  # 13 votes + 1 torn line; flags, chats and upvotes are not votes
    assert report.kept == 7
    assert report.dropped == {
        "identity_leak": 1,
        "flagged": 1,
        "empty_turn": 2,
        "duplicate": 1,
        "error_reply": 1,
        "malformed_line": 1,
    }
    assert "read 14, kept 7, dropped 7" in report.summary()


def test_record_schema_and_hashed_judge(logs):
    battles, _ = run(logs, mode="conv_release")
    b = battles[0]
    assert set(b) == {"question_id", "model_a", "model_b", "winner", "judge", "conversation_a",
                      "conversation_b", "turn", "anony", "language", "tstamp", "conv_metadata"}  # fmt: skip
    assert b["conversation_a"] == [
        {"role": "user", "content": "Explain rainbows briefly."},
        {"role": "assistant", "content": "Light refracts in droplets."},
    ]
    assert b["turn"] == 1 and b["language"] == "English"
    assert b["judge"].startswith("arena_user_") and "10.0.0.7" not in json.dumps(battles)
    assert battles[0]["judge"] != [x for x in battles if x["question_id"] == "c-beta-9"][0]["judge"]
    spanish = [x for x in battles if x["model_a"] == "gamma"][0]
    assert spanish["language"] == "Spanish"
    # conv_release: anonymous battles only
    assert all(x["anony"] for x in battles) and len(battles) == 4
    # simple mode: no conversations
    simple, _ = run(logs)
    assert "conversation_a" not in simple[0] and "question_id" not in simple[0]


def test_filter_switches(logs):
    assert len(run(logs, anony_only=True)[0]) == 4
    assert len(run(logs, anony_only=True, drop_flagged=False)[0]) == 5  # the default, as FastChat's cleaner
    battles, report = run(logs, drop_identity_leak=False, drop_flagged=False, drop_empty_turns=False, dedupe=False)
    # The empty reply now counts; a side with no turn at all never does.
    assert report.dropped == {"error_reply": 1, "empty_turn": 1, "malformed_line": 1}
    assert len(battles) == 11
    assert len(run(logs, exclude_models=["delta"])[0]) == 6
    assert run(logs, exclude_models=["delta"])[1].dropped["excluded_model"] == 1
    newest, rep = run(logs, max_num=2)
    assert [b["tstamp"] for b in newest] == [DAY2, DAY2 + 1] and rep.dropped["over_max_num"] == 5
    day2, rep = run(logs, start_date="2024-05-02")
    assert len(day2) == 2 and rep.read == 3  # day 1's file is not even read (2 votes + the torn line)
    assert len(run(logs, end_date="2024-05-01")[0]) == 5
    assert len(run(logs, max_num_files=1)[0]) == 2
    assert len(run(logs, identity_words=[])[0]) == 8  # the user-flagged leak still goes
    # the default, as FastChat's cleaner: a flag drops nothing
    kept, report = clean_battles(replace(BattlesConfig(), log_dirs=[str(logs)]))
    assert len(kept) == 8 and "flagged" not in report.dropped


def test_bad_config_is_a_clear_error(logs, tmp_path):
    with pytest.raises(ValueError, match="clean.battles.mode"):
        run(logs, mode="everything")
    with pytest.raises(ValueError, match="start_date"):
        run(logs, start_date="May 1st")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(tmp_path / "nope")


def test_writer_lines_are_fastchat_shaped_and_durable(tmp_path):
    w = ConvLogWriter(tmp_path)
    original = vote(DAY1, "leftvote", "a", "b", conv_ids=("ca", "cb"))
    path = w.write(original)
    assert path.name == "2024-05-01-conv.json"
    line = json.loads(path.read_text())
    assert set(line) == {"tstamp", "type", "models", "states", "ip"} and line["models"] == ["", ""]
    assert set(line["states"][0]) >= {"conv_id", "model_name", "messages", "offset"}
    assert ArenaLine.model_validate(line) == original
    chat = json.loads(
        w.write(ChatLine(tstamp=DAY1, model="a", start=1, finish=2, state=state("a", "x")))
        .read_text()
        .splitlines()[1]
    )
    assert set(chat) == {"tstamp", "type", "model", "gen_params", "start", "finish", "state", "ip"}

    # Many threads at once: every line intact, none lost.
    def burst(k: int) -> None:
        for i in range(100):
            w.write(vote(DAY2, "tievote", f"m{k}", "z", reply_a="x" * (i * 37 % 5000)))

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = list(read_log_lines(find_log_files([tmp_path], start_date="2024-05-02")))
    assert len(rows) == 600 and all(r["type"] == "tievote" for r in rows)


def test_leaderboard_from_logs_for_the_web_tab(tmp_path):
    assert leaderboard_from_logs(tmp_path / "missing").empty
    (tmp_path / "logs").mkdir()
    empty = leaderboard_from_logs(tmp_path / "logs")
    assert empty.empty and list(empty.columns) == LEADERBOARD_COLUMNS

    battles = simulate_battles({"strong": 1200, "weak": 800}, 60, seed=1, start_tstamp=DAY1)
    write_arena_logs(tmp_path / "logs", battles)
    table = leaderboard_from_logs(tmp_path / "logs")
    assert list(table["model"]) == ["strong", "weak"]
    assert list(table["votes"]) == [60, 60]
    assert table["ci_lower"].iloc[0] < table["rating"].iloc[0] < table["ci_upper"].iloc[0]
    again = leaderboard_from_logs(str(tmp_path / "logs"))  # cached, same numbers
    assert again.equals(table)
    # A new vote invalidates the cache.
    write_arena_logs(
        tmp_path / "logs", [{"model_a": "weak", "model_b": "new", "winner": "model_b", "tstamp": DAY1 + 999}]
    )
    assert "new" in set(leaderboard_from_logs(tmp_path / "logs")["model"])
    # Custom settings pass through.
    elo = leaderboard_from_logs(
        tmp_path / "logs", ratings_cfg=RatingsConfig(rank_by="elo", bootstrap_rounds=5)
    )
    assert (elo["rating"] == elo["elo_rating"]).all()
