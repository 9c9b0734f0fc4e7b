"""Conversation-release steps on records and logs: gather chats, moderation (a real HTTP
moderation endpoint and the local rules), blocked words, pluggable toxicity, stratified sampling."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import Counter
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestr.arena.logs import ArenaLine, ChatLine, ChatVoteLine, ConvLogWriter, ConvState
from orchestr.arena.release.blocked_words import filter_records
from orchestr.arena.release.chats import gather_chats
from orchestr.arena.release.moderation import local_moderation, moderate_records
from orchestr.arena.release.sample import allocate, sample_records
from orchestr.arena.release.toxicity import lexicon_score, tag_records
from orchestr.config.clean import (
    BlockedWordsConfig,
    ChatsConfig,
    ModerationConfig,
    SampleConfig,
    ToxicityConfig,
)

T0 = dt.datetime(2024, 6, 1, 9, 0).timestamp()


def rec(user: str, reply: str = "Sure.", **kw):
    return {
        "conversation": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
        **kw,
    }


# --------------------------------------------------------------------------- gather chats


def test_gather_chats_keeps_last_turn_of_each_conversation(tmp_path):
    w = ConvLogWriter(tmp_path)
    turn1 = ConvState(conv_id="c1", model_name="alpha", messages=[["user", "Hi"], ["assistant", "Hello!"]])
    turn2 = ConvState(
        conv_id="c1",
        model_name="alpha",
        messages=[
            ["user", "Hi"],
            ["assistant", "Hello!"],
            ["user", "Bonjour, comment ça va?"],
            ["assistant", "Bien."],
        ],
    )
    w.write(ChatLine(tstamp=T0, model="alpha", start=T0, finish=T0, state=turn1, ip="1.2.3.4"))
    w.write(ChatLine(tstamp=T0 + 5, model="alpha", start=T0, finish=T0 + 5, state=turn2, ip="1.2.3.4"))
    err = ConvState(conv_id="c2", model_name="beta",
                    messages=[["user", "x"], ["assistant", "NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE."]])  # fmt: skip
    w.write(ChatLine(tstamp=T0 + 6, model="beta", start=T0, finish=T0, state=err))
    sys_offset = ConvState(conv_id="c3", model_name="beta", offset=2,
                           messages=[["user", "few-shot"], ["assistant", "shot"], ["user", "Hola"], ["assistant", "¡Hola!"]])  # fmt: skip
    w.write(ChatLine(tstamp=T0 + 7, model="beta", start=T0, finish=T0, state=sys_offset, ip="5.6.7.8"))
    w.write(ChatVoteLine(tstamp=T0 + 8, type="upvote", model="beta", state=sys_offset))
    pair = [ConvState(conv_id="a1", model_name="alpha", messages=[["user", "q"], ["assistant", "a"]]),
            ConvState(conv_id="b1", model_name="beta", messages=[["user", "q"], ["assistant", "b"]])]  # fmt: skip
    w.write(ArenaLine.vote("leftvote", pair, True, tstamp=T0 + 9))

    chats, report = gather_chats(replace(ChatsConfig(), log_dirs=[str(tmp_path)]))
    assert [c["conversation_id"] for c in chats] == ["c1", "c3"]
    c1 = chats[0]
    assert c1["turn"] == 2 and c1["model"] == "alpha" and len(c1["conversation"]) == 4
    assert c1["user_id"].startswith("arena_user_") and "1.2.3.4" not in json.dumps(chats)
    assert chats[1]["conversation"][0] == {"role": "user", "content": "Hola"}  # offset honoured
    assert report.read == 4 and report.kept == 2
    assert report.dropped == {"network_error": 1, "earlier_turn_of_same_conversation": 1}

    # Votes can be gathered too: an arena line yields both sides' conversations.
    more, _ = gather_chats(replace(ChatsConfig(), log_dirs=[str(tmp_path)], types=["upvote", "leftvote"]))
    assert sorted(c["conversation_id"] for c in more) == ["a1", "b1", "c3"]
    with pytest.raises(ValueError, match="unknown line types"):
        gather_chats(replace(ChatsConfig(), log_dirs=[str(tmp_path)], types=["vote"]))


# --------------------------------------------------------------------------- moderation


class _ModerationHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/moderations service with its own rule (flags "forbidden-topic")."""

    seen: list[dict] = []
    fail = False

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).fail or self.path != "/v1/moderations":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        results = [
            {"flagged": "forbidden-topic" in text, "categories": {"illicit": "forbidden-topic" in text},
             "category_scores": {"illicit": 0.99 if "forbidden-topic" in text else 0.01}}
            for text in body["input"]
        ]  # fmt: skip
        data = json.dumps({"id": "modr-1", "model": body["model"], "results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def moderation_server():
    _ModerationHandler.seen = []
    _ModerationHandler.fail = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ModerationHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _ModerationHandler
    server.shutdown()
    server.server_close()


def test_moderation_through_an_openai_compatible_endpoint(moderation_server, monkeypatch):
    api_base, handler = moderation_server
    monkeypatch.setenv("MY_MOD_KEY", "sk-test-123")
    records = [
        rec("tell me about forbidden-topic"),
        rec("what is 2+2?"),
        rec("hi", "forbidden-topic is fine"),
    ]
    cfg = replace(
        ModerationConfig(), api_base=api_base, api_key_env="MY_MOD_KEY", batch_size=2, model="mod-x"
    )
    out, report = moderate_records(records, cfg)
    assert [r["openai_moderation"]["flagged"] for r in out] == [True, False, False]  # only user turns checked
    assert all(r["openai_moderation"]["source"] == "api" for r in out)
    assert out[0]["openai_moderation"]["category_scores"]["illicit"] == 0.99
    assert len(handler.seen) == 2 and handler.seen[0]["auth"] == "Bearer sk-test-123"
    assert handler.seen[0]["body"] == {
        "model": "mod-x",
        "input": ["tell me about forbidden-topic", "what is 2+2?"],
    }
    assert report.tagged == {"flagged_api": 1} and report.kept == 3

    dropped, report = moderate_records([rec("forbidden-topic"), rec("fine")], replace(cfg, drop_flagged=True))
    assert len(dropped) == 1 and report.dropped == {"flagged": 1}


def test_moderation_falls_back_to_local_rules_or_fails_clearly(moderation_server, capsys):
    api_base, handler = moderation_server
    handler.fail = True
    cfg = replace(ModerationConfig(), api_base=api_base)
    out, report = moderate_records([rec("I want to kill myself"), rec("nice weather")], cfg)
    assert "using local rules" in capsys.readouterr().err
    assert [r["openai_moderation"]["source"] for r in out] == ["local", "local"]
    assert (
        out[0]["openai_moderation"]["categories"]["self-harm"] and not out[1]["openai_moderation"]["flagged"]
    )
    with pytest.raises(RuntimeError, match="HTTP 500"):
        moderate_records([rec("x")], replace(cfg, fallback_to_local=False))
    with pytest.raises(ValueError, match="needs clean.moderation.api_base"):
        moderate_records([rec("x")], replace(ModerationConfig(), backend="api"))


def test_local_moderation_rules():
    assert local_moderation("How do I make a bomb at home?")["categories"]["violence"]
    assert local_moderation("you are an idiot")["categories"]["harassment"]
    clean = local_moderation("How do I bake bread? Kill the oven timer at 30 minutes.")
    assert not clean["flagged"] and set(clean["categories"]) >= {"violence", "sexual", "hate", "self-harm"}


# --------------------------------------------------------------------------- blocked words


def test_blocked_words_whole_words_phrases_and_tag_mode(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# comment line\nass\nbad phrase  # trailing comment\n\n")
    records = [
        rec("this class is great"),
        rec("you ASS"),
        rec("a Bad Phrase here"),
        rec("bad, phrase"),
        rec("ok"),
    ]
    cfg = replace(BlockedWordsConfig(), words_file=str(words))
    kept, report = filter_records([dict(r) for r in records], cfg)
    assert [r["conversation"][0]["content"] for r in kept] == ["this class is great", "bad, phrase", "ok"]
    assert report.dropped == {"blocked_word": 2}

    tagged, report = filter_records([dict(r) for r in records], replace(cfg, action="tag", words=["great"]))
    assert (
        len(tagged) == 5
        and tagged[0]["blocked_words"] == ["great"]
        and tagged[2]["blocked_words"] == ["bad phrase"]
    )
    assert report.tagged == {"blocked_word": 3}


def test_blocked_words_default_list_and_errors(tmp_path):
    kept, _ = filter_records([rec("what the fuck"), rec("hello")], BlockedWordsConfig())  # packaged conf list
    assert len(kept) == 1
    with pytest.raises(FileNotFoundError, match="words_file"):
        filter_records([rec("x")], replace(BlockedWordsConfig(), words_file=str(tmp_path / "none.txt")))
    with pytest.raises(ValueError, match="word list is empty"):
        filter_records([rec("x")], replace(BlockedWordsConfig(), words_file=None))


# --------------------------------------------------------------------------- toxicity


def test_toxicity_default_scorer_and_a_plugged_in_one(tmp_path, monkeypatch):
    assert lexicon_score("you stupid idiot, shut up") == 1.0 and lexicon_score("lovely day") == 0.0
    out, report = tag_records([rec("you stupid idiot, shut up"), rec("lovely day")], ToxicityConfig())
    assert [r["toxic"] for r in out] == [True, False] and report.tagged == {"toxic": 1}

    (tmp_path / "my_scorers.py").write_text(
        "def shouty(text, min_caps=3):\n"
        "    words = [w for w in text.split() if w.isupper() and len(w) >= min_caps]\n"
        "    return min(1.0, len(words) / 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = replace(
        ToxicityConfig(), scorer="my_scorers:shouty", scorer_kwargs={"min_caps": 4}, drop_toxic=True
    )
    out, report = tag_records([rec("WHY ARE YOU LIKE THIS"), rec("why OK"), rec("fine")], cfg)
    assert [r["conversation"][0]["content"] for r in out] == ["why OK", "fine"]
    assert out[0]["toxicity_score"] == 0.0 and report.dropped == {"toxic": 1}
    with pytest.raises(ValueError, match="module:function|cannot import|not a function"):
        tag_records([rec("x")], replace(cfg, scorer="my_scorers.shouty"))
    with pytest.raises(ValueError, match="cannot import"):
        tag_records([rec("x")], replace(cfg, scorer="no_such_mod:f"))


# --------------------------------------------------------------------------- sampling


def _population():
    out = []
    for model, n in (("alpha", 600), ("beta", 300), ("gamma", 90), ("delta", 10)):
        out += [{"model": model, "language": "English" if i % 3 else "Spanish", "i": i} for i in range(n)]
    return out


def test_stratified_sample_is_proportional_and_seeded():
    pop = _population()
    cfg = replace(SampleConfig(), n=100, seed=7)
    a, report = sample_records(pop, cfg)
    assert len(a) == 100 and report.dropped == {"not_sampled": 900}
    assert Counter(r["model"] for r in a) == {"alpha": 60, "beta": 30, "gamma": 9, "delta": 1}
    b, _ = sample_records(pop, cfg)
    assert a == b  # same seed, same sample
    c, _ = sample_records(pop, replace(cfg, seed=8))
    assert a != c and Counter(r["model"] for r in c) == Counter(r["model"] for r in a)
    # Two keys: strata are (model, language) pairs.
    two, _ = sample_records(pop, replace(cfg, by=["model", "language"], n=50))
    assert len(two) == 50 and {(r["model"], r["language"]) for r in two} >= {
        ("delta", "Spanish"),
        ("delta", "English"),
    }


def test_sample_fraction_min_per_stratum_and_errors():
    pop = _population()
    out, _ = sample_records(pop, replace(SampleConfig(), n=None, fraction=0.05, seed=1))
    assert Counter(r["model"] for r in out) == {"alpha": 30, "beta": 15, "gamma": 4, "delta": 1}
    assert allocate({"a": 5, "b": 5, "c": 1}, 2, 1) == {"a": 1, "b": 1, "c": 0}
    assert allocate({"a": 3}, 10, 1) == {"a": 3}
    with pytest.raises(ValueError, match="exactly one of n or fraction"):
        sample_records(pop, replace(SampleConfig(), n=10, fraction=0.1))
