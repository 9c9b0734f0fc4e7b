"""The web UI in a real headless Chromium against a real deployment (`orchestr launch`, embedded model).

Chromium is Debian's (/usr/bin/chromium, installed by scripts/install_browser.sh), driven through
Playwright's Python API; Playwright's own browser downloads are never used. Screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from orchestr.arena.battles import clean_battles
from orchestr.arena.logs import find_log_files
from orchestr.config.clean import BattlesConfig
from tests.conftest import free_port
from tests.test_arena_fastchat_compat import FASTCHAT_PY

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_TOKENS = "24"  # short answers keep the CPU model quick
REPLY_TIMEOUT_MS = 180_000

# Records every length the newest bot message of a chatbot takes, to tell a stream from one update.
WATCH_JS = """(sel) => {
  const root = document.querySelector(sel);
  const key = '__lens_' + sel;
  window[key] = [];
  new MutationObserver(() => {
    const bots = root.querySelectorAll('[data-testid="bot"]');
    const n = bots.length ? bots[bots.length - 1].innerText.trim().length : 0;
    const seen = window[key];
    if (n && seen[seen.length - 1] !== n) seen.push(n);
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


@contextmanager
def launch_chromium() -> Iterator:
    """The real Chromium under Playwright (the test skips when it is not installed)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/install_browser.sh")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as b:
        yield b


@pytest.fixture
def page(browser, deployment):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(deployment.web_url)
    pg.wait_for_selector("#anony_input textarea")
    yield pg
    ctx.close()


def log_lines(log_dir: Path) -> list[dict]:
    lines = []
    for f in sorted(Path(log_dir).glob("*-conv.json")):
        lines += [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
    return lines


def set_max_tokens(page, prefix: str) -> None:
    page.click(f"#{prefix}_parameters")  # open the accordion
    box = page.locator(f"#{prefix}_max_tokens input[type=number]")
    box.wait_for(state="visible")
    check = f"() => document.querySelector('#{prefix}_max_tokens input[type=range]').value === '{MAX_TOKENS}'"
    # A slider that has just mounted (first visit of a tab) can re-apply its initial value once.
    for _ in range(5):
        box.fill(MAX_TOKENS)
        box.press("Enter")
        box.blur()
        try:
            page.wait_for_function(check, timeout=2_000)
            page.wait_for_timeout(300)
            if page.evaluate(check):
                return
        except PlaywrightTimeout:
            pass
    raise AssertionError(f"could not set {prefix} max output tokens to {MAX_TOKENS}")


def wait_enabled(page, selector: str) -> None:
    page.wait_for_function(f"() => !document.querySelector('{selector}').disabled", timeout=REPLY_TIMEOUT_MS)


def same_text(shown: str, logged: str | None) -> bool:
    """Whether the rendered reply is the logged one: Markdown rendering may drop list numbers or
    markup, never add words, so the shown words must be an in-order subsequence of the logged ones."""
    logged_words = iter(re.findall(r"\w+", logged or ""))
    shown_words = re.findall(r"\w+", shown)
    return bool(shown_words) and all(w in logged_words for w in shown_words)


def bot_texts(page, chatbot: str) -> list[str]:
    return [t.strip() for t in page.locator(f"{chatbot} [data-testid='bot']").all_inner_texts()]


def name_label(page, side: str) -> str:
    # the label's rendered Markdown only: the element also hosts Gradio's progress text
    return page.locator(f"#anony_name_{side} [data-testid=markdown]").inner_text()


def test_chat_tab_streams_a_reply_and_logs_turn_and_vote(page, deployment, artifacts_dir):
    page.get_by_role("tab", name="Direct chat").click()
    page.wait_for_selector("#chat_input textarea")
    model = page.locator("#chat_model input").input_value()
    assert model in deployment.model_names
    set_max_tokens(page, "chat")
    page.evaluate(WATCH_JS, "#chat_chatbot")

    page.fill("#chat_input textarea", "Name three colors.")
    page.press("#chat_input textarea", "Enter")
    wait_enabled(page, "#chat_upvote")

    replies = bot_texts(page, "#chat_chatbot")
    assert len(replies) == 1 and replies[0] and "API REQUEST ERROR" not in replies[0], replies
    lengths = page.evaluate("() => window['__lens_#chat_chatbot']")
    assert len(lengths) >= 2, f"the reply arrived in one piece, not streamed: {lengths}"
    page.click("#chat_upvote")
    page.wait_for_function("() => document.querySelector('#chat_notice').innerText.includes('Thanks')")
    page.screenshot(path=str(artifacts_dir / "web_chat.png"), full_page=True)

    lines = log_lines(deployment.web_log_dir)
    chat = [x for x in lines if x["type"] == "chat" and x["model"] == model
            and x["state"]["messages"][0] == ["user", "Name three colors."]]
    assert chat and same_text(replies[0], chat[-1]["state"]["messages"][1][1])
    assert chat[-1]["gen_params"]["max_new_tokens"] == int(MAX_TOKENS)
    votes = [x for x in lines if x["type"] == "upvote" and x["state"]["conv_id"] == chat[-1]["state"]["conv_id"]]
    assert len(votes) == 1 and votes[0]["model"] == model


def test_anonymous_battle_hides_names_until_the_vote(page, deployment, artifacts_dir):
    set_max_tokens(page, "anony")
    page.fill("#anony_input textarea", "What is the capital of France?")
    page.click("#anony_send")
    wait_enabled(page, "#anony_vote_b")

    a, b = bot_texts(page, "#anony_chatbot_a"), bot_texts(page, "#anony_chatbot_b")
    assert len(a) == 1 and a[0] and len(b) == 1 and b[0], (a, b)
    hidden = name_label(page, "a") + name_label(page, "b")
    assert not any(name in hidden for name in deployment.model_names), hidden

    page.click("#anony_vote_b")
    page.wait_for_function("() => ['a', 'b'].every(s => "
                           "document.querySelector('#anony_name_' + s + ' [data-testid=markdown]').innerText.includes(':'))")
    revealed = [name_label(page, s).split(":", 1)[1].strip() for s in "ab"]
    assert set(revealed) <= set(deployment.model_names) and revealed[0] != revealed[1], revealed
    assert page.locator("#anony_vote_a").is_disabled()  # one vote per round
    page.screenshot(path=str(artifacts_dir / "web_arena_battle.png"), full_page=True)

    votes = [x for x in log_lines(deployment.web_log_dir) if x["type"] == "rightvote"
             and x["states"][0]["messages"][0] == ["user", "What is the capital of France?"]]
    assert len(votes) == 1, votes
    vote = votes[0]
    assert vote["models"] == ["", ""] and "anony" not in vote  # FastChat's anonymous shape
    assert [s["model_name"] for s in vote["states"]] == revealed

    # The leaderboard counted the vote without a manual refresh, plots included.
    page.get_by_role("tab", name="Leaderboard").click()
    page.wait_for_function("(names) => { const t = document.querySelector('#leaderboard_table');"
                           " return t && names.every(n => t.innerText.includes(n)); }", arg=revealed)
    page.wait_for_selector("#leaderboard_win_fraction img")
    page.screenshot(path=str(artifacts_dir / "web_leaderboard.png"), full_page=True)
    page.get_by_role("tab", name="Arena (battle)").click()
    conv_ids = {s["conv_id"] for s in vote["states"]}
    turns = [x for x in log_lines(deployment.web_log_dir) if x["type"] == "chat" and x["state"]["conv_id"] in conv_ids]
    assert sorted(x["model"] for x in turns) == sorted(revealed)
    assert all(x["gen_params"]["max_new_tokens"] == int(MAX_TOKENS) for x in turns)
    for state, reply in zip(vote["states"], (a[0], b[0]), strict=True):
        (role_q, question), (role_a, answer) = state["messages"]
        assert (role_q, question, role_a) == ("user", "What is the capital of France?", "assistant")
        assert same_text(reply, answer), (reply, answer)

    # a model naming itself can still be reported after the reveal
    page.click("#anony_leak")
    page.wait_for_function("() => document.querySelector('#anony_notice').innerText.includes('identity')")
    flags = [x for x in log_lines(deployment.web_log_dir) if x["type"] == "flag"
             and {s["conv_id"] for s in x["states"]} == conv_ids]
    assert len(flags) == 1 and flags[0]["flag_reason"] == "identity_leak" and flags[0]["models"] == ["", ""]


def test_side_by_side_uses_the_picked_models(page, deployment, artifacts_dir):
    page.get_by_role("tab", name="Arena (side-by-side)").click()
    page.wait_for_selector("#named_input textarea")
    picked = [page.locator(f"#named_model_{s} input").input_value() for s in "ab"]
    assert set(picked) == set(deployment.model_names[:2]), picked
    set_max_tokens(page, "named")
    page.fill("#named_input textarea", "Say hello.")
    page.click("#named_send")
    wait_enabled(page, "#named_vote_tie")
    page.click("#named_vote_tie")
    page.wait_for_function("() => document.querySelector('#named_notice').innerText.includes('tie')")
    page.screenshot(path=str(artifacts_dir / "web_arena_side_by_side.png"), full_page=True)

    ties = [x for x in log_lines(deployment.web_log_dir) if x["type"] == "tievote"
            and x["states"][0]["messages"][0] == ["user", "Say hello."]]
    assert len(ties) == 1 and ties[0]["models"] == picked and "anony" not in ties[0]  # FastChat: names shown = named
    conv_ids = {s["conv_id"] for s in ties[0]["states"]}
    turns = [x for x in log_lines(deployment.web_log_dir) if x["type"] == "chat" and x["state"]["conv_id"] in conv_ids]
    assert sorted(x["model"] for x in turns) == sorted(picked)
    assert all(x["gen_params"]["max_new_tokens"] == int(MAX_TOKENS) for x in turns)


# --------------------------------------------------------------------------- guards and moderation

GUARD_LIMIT_CHARS = 200


FASTCHAT_CLEAN = """
import json, sys
from fastchat.serve.monitor.clean_battle_data import clean_battle_data
battles = clean_battle_data(sys.argv[1:], [])
print(json.dumps({"n": len(battles), "anony": sum(b["anony"] for b in battles)}))
"""


@pytest.mark.skipif(FASTCHAT_PY is None, reason="FastChat's analysis venv not built (scripts/setup_fastchat_monitor.sh)")
def test_fastchat_cleans_the_votes_this_browser_session_logged(deployment):
    """FastChat 0.2.36's own cleaner reads the day files the browser votes above wrote and keeps
    exactly the anonymous battles orchestr's cleaner keeps. (A named battle whose reply happens to
    name a model is dropped by FastChat and kept by orchestr: its names were shown anyway.)"""
    files = [str(f) for f in find_log_files([deployment.web_log_dir])]
    assert files, "the browser tests above logged no day file"
    out = subprocess.run([str(FASTCHAT_PY), "-c", FASTCHAT_CLEAN, *files], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    ours, _ = clean_battles(BattlesConfig(), [str(deployment.web_log_dir)])
    votes = [x for x in log_lines(deployment.web_log_dir) if x["type"] in ("leftvote", "rightvote", "tievote",
                                                                         "bothbad_vote")]
    assert any(v["models"] == ["", ""] for v in votes) and any(v["models"][0] for v in votes)  # both kinds
    anony = sum(b["anony"] for b in ours)
    assert theirs["anony"] == anony and theirs["n"] - theirs["anony"] <= len(ours) - anony, (theirs, ours)


@pytest.fixture(scope="module")
def guarded_web(deployment, tmp_path_factory):
    """A second web service (single mode) on the deployment's controller, with tight limits and
    blocked-words moderation, started from its real command line."""
    log_dir = tmp_path_factory.mktemp("guarded-web-logs")
    port = free_port()
    cmd = [sys.executable, "-m", "orchestr.services.web", "--host", "127.0.0.1", "--port", str(port),
           "--controller-address", deployment.controller_url, "--mode", "single", "--log-dir", str(log_dir),
           "--max-turns", "1", "--max-input-chars", str(GUARD_LIMIT_CHARS), "--max-new-tokens", "16",
           "--moderate", "--blocked-words", '["forbiddenword"]']
    out = open(log_dir.parent / "guarded-web.out", "w")  # noqa: SIM115 - closed below
    # the deployment's controller answers only with its service secret
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=deployment.secret_env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"web service did not start: {(log_dir.parent / 'guarded-web.out').read_text()}")
            time.sleep(0.5)
        yield url, log_dir
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        out.close()


def test_guards_and_moderation_show_visible_messages(browser, guarded_web, artifacts_dir):
    url, log_dir = guarded_web
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(url)
        page.wait_for_selector("#chat_input textarea")
        assert page.locator("#anony_input").count() == 0  # single mode: the chat tab only

        def send(text: str) -> None:
            page.fill("#chat_input textarea", text)
            page.click("#chat_send")

        def notice_contains(text: str) -> None:
            page.wait_for_function(
                f"() => document.querySelector('#chat_notice').innerText.includes({json.dumps(text)})")

        send("x" * (GUARD_LIMIT_CHARS + 1))
        notice_contains("too long")
        assert bot_texts(page, "#chat_chatbot") == []

        send("please repeat the ForbiddenWord")
        notice_contains("moderation filter")
        assert any("moderation filter" in t for t in bot_texts(page, "#chat_chatbot"))

        send("Hi!")
        wait_enabled(page, "#chat_upvote")
        replies = bot_texts(page, "#chat_chatbot")
        assert len(replies) == 1 and replies[0]  # the refused exchange is not part of the conversation
        send("And again?")
        notice_contains("limit of 1 turns")
        page.screenshot(path=str(artifacts_dir / "web_guards.png"), full_page=True)
    finally:
        ctx.close()

    lines = log_lines(log_dir)
    refused = [x for x in lines if x.get("moderation")]
    assert len(refused) == 1 and refused[0]["moderation"]["flagged"] is True
    assert refused[0]["moderation"]["categories"] == ["forbiddenword"]
    assert refused[0]["state"]["messages"][0] == ["user", "please repeat the ForbiddenWord"]
    chats = [x for x in lines if x["type"] == "chat" and not x.get("moderation")]
    assert len(chats) == 1 and chats[0]["state"]["messages"][0] == ["user", "Hi!"]  # blocked inputs never sent
