"""Fast tests of the web UI's parts: battle sampling, guards, moderation, conversation logs, flags."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from orchestr.arena.battles import clean_battles
from orchestr.arena.logs import conv_log_path, hash_ip
from orchestr.config.clean import BattlesConfig
from orchestr.config.flags import to_argv
from orchestr.config.serving import WebModerationConfig, WebServiceConfig
from orchestr.services.web.__main__ import build_parser, config_from_args
from orchestr.services.web.conversation import Conversation
from orchestr.services.web.guards import input_problem
from orchestr.services.web.moderation import Moderator
from orchestr.services.web.recorder import Recorder
from orchestr.services.web.sampling import NoBattlePair, battle_pair
from tests.conftest import free_port

# --------------------------------------------------------------------------- sampling


def test_battle_pair_draws_two_distinct_served_models():
    rng = random.Random(0)
    seen = Counter()
    for _ in range(400):
        a, b = battle_pair(["m1", "m2", "m3"], rng=rng)
        assert a != b and {a, b} <= {"m1", "m2", "m3"}
        seen[a] += 1
    # both sides get every model (the order is shuffled)
    assert set(seen) == {"m1", "m2", "m3"}


def test_battle_pair_zero_weight_and_exclusions_can_leave_no_pair():
    rng = random.Random(1)
    # c weighs 0 (never drawn) and a-b is excluded: nobody can meet
    with pytest.raises(NoBattlePair):
        battle_pair(["a", "b", "c"], {"c": 0.0}, [["a", "b"]], rng=rng)
    assert {battle_pair(["a", "b", "c"], {"c": 0.0}, rng=rng) for _ in range(50)} <= {("a", "b"), ("b", "a")}


def test_battle_pair_weights_shift_the_draw():
    rng = random.Random(2)
    counts = Counter()
    for _ in range(3000):
        counts.update(battle_pair(["heavy", "x", "y", "z"], {"heavy": 10.0}, rng=rng))
    assert counts["heavy"] > 2 * counts["x"]
    pairs = {frozenset(battle_pair(["a", "b", "c"], None, [["a", "b"]], rng=rng)) for _ in range(200)}
    assert frozenset({"a", "b"}) not in pairs and pairs == {frozenset({"a", "c"}), frozenset({"b", "c"})}


def test_battle_pair_needs_two_models():
    with pytest.raises(NoBattlePair, match="two models"):
        battle_pair(["only"])
    with pytest.raises(NoBattlePair):
        battle_pair([])


# --------------------------------------------------------------------------- guards


def test_input_guards_give_visible_reasons():
    conv = Conversation(model_name="m")
    assert input_problem("hello", [conv], max_turns=2, max_input_chars=10) is None
    assert "too long" in input_problem("x" * 11, [conv], max_turns=2, max_input_chars=10)
    assert input_problem("   ", [conv], 2, 10) == "Type a message first."
    for i in range(2):
        conv.add_user(f"q{i}")
        conv.set_reply("a")
    assert "limit of 2 turns" in input_problem("more", [conv], max_turns=2, max_input_chars=10)


# --------------------------------------------------------------------------- conversation


def test_conversation_prompt_log_and_regenerate():
    conv = Conversation(model_name="m", system_message="be brief")
    conv.add_user("hi")
    assert [m.role for m in conv.prompt()] == ["system", "user"]  # the pending reply is not sent
    conv.set_reply("hello")
    log = conv.to_log()
    assert log["messages"] == [["user", "hi"], ["assistant", "hello"]]
    assert log["model_name"] == "m" and log["offset"] == 0 and log["conv_id"] == conv.conv_id
    assert conv.chatbot() == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert conv.drop_reply() and conv.prompt()[-1].content == "hi"
    assert not Conversation(model_name="m").drop_reply()


# --------------------------------------------------------------------------- logs


class FakeClient:  # what gr.Request exposes: headers and the socket peer
    def __init__(self, host: str, headers: dict | None = None):
        self.client = type("Peer", (), {"host": host})()
        self.headers = headers or {}


def _battle(a: str, b: str, question: str = "What is 2+2?") -> list[Conversation]:
    convs = [Conversation(model_name=a), Conversation(model_name=b)]
    for c, reply in zip(convs, ("4", "four"), strict=True):
        c.add_user(question)
        c.set_reply(reply)
    return convs


def test_recorder_writes_fastchat_fields_with_hashed_ip(tmp_path: Path):
    rec = Recorder(str(tmp_path), ip_logging="hash", salt="s")
    convs = _battle("model-x", "model-y")
    t0 = time.time()
    rec.chat(convs[0], {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 8}, t0, t0 + 1, FakeClient("1.2.3.4"))
    rec.chat_vote("upvote", convs[0], FakeClient("1.2.3.4"))
    assert rec.arena("leftvote", convs, anony=True, request=FakeClient("10.0.0.1", {"X-Forwarded-For": "5.6.7.8"}))
    path = conv_log_path(tmp_path)  # <log_dir>/YYYY-MM-DD-conv.json, today
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    chat, vote, battle = lines
    assert {"tstamp", "type", "model", "gen_params", "start", "finish", "state", "ip"} <= set(chat)
    assert chat["type"] == "chat" and chat["model"] == "model-x"
    assert chat["state"]["messages"] == [["user", "What is 2+2?"], ["assistant", "4"]]
    assert chat["ip"] == hash_ip("1.2.3.4", "s") and "1.2.3.4" not in path.read_text()
    assert vote["type"] == "upvote" and vote["model"] == "model-x" and "state" in vote
    # FastChat's anonymous shape: hidden names on screen, the real ones only in the states
    assert battle["type"] == "leftvote" and battle["models"] == ["", ""] and "anony" not in battle
    assert [s["model_name"] for s in battle["states"]] == ["model-x", "model-y"]
    assert set(battle) == {"tstamp", "type", "models", "states", "ip"}
    assert rec.arena("tievote", convs, anony=False, request=None)
    named = json.loads(path.read_text().splitlines()[-1])
    assert named["models"] == ["model-x", "model-y"] and "anony" not in named
    assert battle["ip"] == hash_ip("5.6.7.8", "s")  # proxy header wins, like FastChat


@pytest.mark.parametrize("mode,expected", [("drop", None), ("raw", "1.2.3.4")])
def test_recorder_ip_modes(tmp_path: Path, mode: str, expected: str | None):
    rec = Recorder(str(tmp_path), ip_logging=mode)
    assert rec.chat_vote("downvote", _battle("a", "b")[0], FakeClient("1.2.3.4"))
    assert json.loads(conv_log_path(tmp_path).read_text())["ip"] == expected


def test_recorder_says_when_it_cannot_write(tmp_path: Path):
    """A folder that cannot be written (here: a file in its way) is reported at start-up in words
    without the path, and a record it cannot take is a False, never an exception."""
    blocked = tmp_path / "logs"
    blocked.write_text("not a folder")
    rec = Recorder(str(blocked))
    problem = rec.check_writable()
    assert problem and "cannot write its log" in problem and str(blocked) not in problem
    assert rec.chat_vote("upvote", _battle("a", "b")[0], None) is False
    assert Recorder(str(tmp_path / "fine")).check_writable() is None


def test_recorder_rejects_unknown_ip_mode(tmp_path: Path):
    with pytest.raises(ValueError, match="ip_logging"):
        Recorder(str(tmp_path), ip_logging="keep")


def test_logged_votes_become_battles_for_the_analytics(tmp_path: Path):
    """What the web UI writes is what `orchestr clean` reads: votes -> clean battles, leak flags honoured (clean.battles.drop_flagged)."""
    rec = Recorder(str(tmp_path))
    req = FakeClient("9.9.9.9")
    rec.arena("rightvote", _battle("m1", "m2"), anony=True, request=req)
    rec.arena("tievote", _battle("m2", "m3", "hello?"), anony=False, request=req)
    leaked = _battle("m1", "m3", "who are you?")
    rec.arena("bothbad_vote", leaked, anony=True, request=req)
    rec.arena("flag", leaked, anony=True, request=req, flag_reason="identity_leak")
    battles, _ = clean_battles(BattlesConfig(identity_words=[], drop_flagged=True), [str(tmp_path)])
    got = {(b["model_a"], b["model_b"], b["winner"], b["anony"]) for b in battles}
    assert got == {("m1", "m2", "model_b", True), ("m2", "m3", "tie", False)}


# --------------------------------------------------------------------------- moderation


def test_blocked_words_match_whole_words_case_insensitively(tmp_path: Path):
    words = tmp_path / "words.txt"
    words.write_text("# comment\nforbidden phrase\n")
    mod = Moderator(WebModerationConfig(enabled=True, blocked_words=["badword"], blocked_words_file=str(words)))
    flagged = asyncio.run(mod.check("this has a BadWord in it"))
    assert flagged.flagged and flagged.source == "blocked_words" and flagged.categories == ["badword"]
    assert asyncio.run(mod.check("A Forbidden  Phrase?")).flagged is False  # phrase needs its exact spacing
    assert asyncio.run(mod.check("a forbidden phrase!")).flagged
    assert not asyncio.run(mod.check("badwords and notbadword are other words")).flagged
    off = Moderator(WebModerationConfig(enabled=False, blocked_words=["badword"]))
    assert not asyncio.run(off.check("badword")).flagged


def test_moderation_endpoint_is_called_openai_style():
    seen: list[dict] = []
    app = FastAPI()

    @app.post("/v1/moderations")
    def moderate(body: dict) -> dict:
        seen.append(body)
        bad = "attack" in body["input"]
        return {"id": "modr-1", "model": body["model"],
                "results": [{"flagged": bad, "categories": {"violence": bad, "hate": False}}]}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        mod = Moderator(WebModerationConfig(enabled=True, url=f"http://127.0.0.1:{port}/v1", model="mod-x"))
        verdict = asyncio.run(mod.check("plan an attack"))
        assert verdict.flagged and verdict.source == "endpoint" and verdict.categories == ["violence"]
        assert not asyncio.run(mod.check("plan a picnic")).flagged
        assert seen[0] == {"model": "mod-x", "input": "plan an attack"}
        # an unreachable endpoint fails open (and logs a warning) rather than blocking chat
        down = Moderator(WebModerationConfig(enabled=True, url="http://127.0.0.1:9/v1", timeout_s=1))
        assert not asyncio.run(down.check("plan an attack")).flagged
    finally:
        server.should_exit = True
        thread.join(timeout=5)


# --------------------------------------------------------------------------- flags


def test_cli_flags_round_trip_through_the_parser():
    cfg = WebServiceConfig(mode="single", log_dir="/tmp/x", ip_logging="drop", max_turns=3, max_input_chars=99,
                           max_new_tokens=17, arena_sampling_weights={"a": 2.0},
                           arena_excluded_pairs=[["a", "b"]], concurrency_count=4,
                           moderation=WebModerationConfig(enabled=True, url="http://m/v1",
                                                          blocked_words=["x y"]))
    back = config_from_args(build_parser().parse_args(["--port", "1", *to_argv(cfg)]))
    for key in ("mode", "log_dir", "ip_logging", "max_turns", "max_input_chars", "max_new_tokens",
                "arena_sampling_weights", "arena_excluded_pairs", "concurrency_count", "moderation"):
        assert getattr(back, key) == getattr(cfg, key), key


def test_bad_flags_fail_with_a_clear_message():
    cmd = [sys.executable, "-m", "orchestr.services.web", "--arena-excluded-pairs", "a,b"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--arena-excluded-pairs must be JSON" in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "orchestr.services.web", "--arena-excluded-pairs", '[["a"]]'],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "--arena-excluded-pairs: each pair must name exactly two models" in out.stderr
    assert "Traceback" not in out.stderr


# --------------------------------------------------------------------------- app


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_app_builds_and_answers_health_without_a_controller(tmp_path: Path, mode: str):
    from fastapi.testclient import TestClient

    from orchestr.services.web.app import create_app
    from orchestr.services.web.client import ServingClient
    from orchestr.services.web.context import WebContext

    cfg = WebServiceConfig(mode=mode, log_dir=str(tmp_path))
    client = ServingClient(f"http://127.0.0.1:{free_port()}")  # nothing listens: no models, no crash
    ctx = WebContext(cfg=cfg, client=client, recorder=Recorder(str(tmp_path)),
                     moderator=Moderator(cfg.moderation), models=client.list_models())
    assert ctx.models == []
    with TestClient(create_app(ctx)) as http:
        assert http.get("/health").json() == {"status": "ok", "mode": mode, "problems": []}
        page = http.get("/")
        assert page.status_code == 200
        ids = ["chat_input", "chat_send", "chat_model"] + (["anony_vote_a", "named_model_b", "leaderboard_table"]
                                                          if mode == "multi" else [])
        config = http.get("/config").json()
        present = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert set(ids) <= present
        assert ("anony_input" in present) == (mode == "multi")


def test_login_is_required_when_web_auth_is_set(tmp_path: Path):
    from fastapi.testclient import TestClient

    from orchestr.services.web.app import create_app
    from orchestr.services.web.client import ServingClient
    from orchestr.services.web.context import WebContext

    cfg = WebServiceConfig(mode="single", log_dir=str(tmp_path))
    client = ServingClient(f"http://127.0.0.1:{free_port()}")
    ctx = WebContext(cfg=cfg, client=client, recorder=Recorder(str(tmp_path)),
                     moderator=Moderator(cfg.moderation), models=[])
    with TestClient(create_app(ctx, auth=[("ann", "s3cret")])) as http:
        assert http.get("/health").status_code == 200  # the launcher's health check stays open
        r = http.get("/config")
        assert r.status_code == 401 and "components" not in r.text  # nothing shown before login
        assert http.post("/login", data={"username": "ann", "password": "wrong"}).status_code == 400
        assert http.post("/login", data={"username": "ann", "password": "s3cret"}).status_code == 200
        assert any(c.get("props", {}).get("elem_id") == "chat_input" for c in http.get("/config").json()["components"])
