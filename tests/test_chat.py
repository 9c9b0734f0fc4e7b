"""`orchestr chat` with the model loaded in-process: driven through a pipe and through tmux."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestr.chat import Conversation

REPO = Path(__file__).resolve().parents[1]


def run_chat(*args: str, stdin: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestr", "chat", *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- fast


def test_conversation_remove_and_load_formats():
    conv = Conversation("be brief")
    conv.turns += [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    assert conv.remove_last_turn() and [m["content"] for m in conv.turns] == ["a", "b"]
    again = Conversation.from_json(conv.to_json("m"))
    assert again.system == "be brief" and again.turns == conv.turns
    # FastChat's Conversation.dict(): [role, text] pairs after `offset`, system_message apart.
    fastchat = {
        "template_name": "vicuna_v1.1",
        "system_message": "sys",
        "roles": ["USER", "ASSISTANT"],
        "messages": [["USER", "hi"], ["ASSISTANT", "hello"]],
        "offset": 0,
    }
    conv = Conversation.from_json(fastchat)
    assert conv.system == "sys" and conv.turns == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    with pytest.raises(ValueError):
        Conversation.from_json({"messages": [{"role": "wizard", "content": "x"}]})


def test_bad_config_override_fails_clearly():
    r = run_chat("model=no-such-model", stdin="", timeout=120)
    assert r.returncode == 2 and "no-such-model" in r.stderr and "Traceback" not in r.stderr  # a user mistake


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_local_chat_through_a_pipe(tmp_path):
    saved = tmp_path / "conv.json"
    fastchat_file = tmp_path / "fastchat.json"
    fastchat_file.write_text(
        json.dumps(
            {"system_message": "", "messages": [["USER", "Hi"], ["ASSISTANT", "Hello! How can I help?"]]}
        )
    )
    script = "\n".join(
        [
            "What is the capital of France?",
            "!!regen",
            "!!save " + str(saved),
            "!!reset",
            "!!remove",
            "!!load " + str(fastchat_file),
            "Tell me a joke.",
            "!!exit",
            "never read",
        ]
    )
    r = run_chat("model=smollm2-135m", "--temperature", "0", "--max-new-tokens", "16", stdin=script + "\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    replies = [line for line in out.splitlines() if line.startswith("assistant: ")]
    # two answers (the second regenerated), the loaded history's reply, the answer after loading
    assert len(replies) == 4 and all(line.removeprefix("assistant: ").strip() for line in replies)
    assert replies[0] == replies[1]  # greedy: the regenerated reply is the same
    assert "No messages to remove." in out  # after !!reset there is nothing to drop
    assert replies[2] == "assistant: Hello! How can I help?"  # the loaded history is shown
    assert "never read" not in out and out.rstrip().endswith("exit...")
    conv = json.loads(saved.read_text())
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][1]["content"] == replies[0].removeprefix("assistant: ")


@pytest.mark.slow
def test_local_chat_rich_multiline_through_a_pipe():
    # On a pipe, --multiline ends a message at an empty line; rich renders markdown.
    r = run_chat(
        "model=smollm2-135m", "--style", "rich", "--multiline", "--temperature", "0", "--max-new-tokens", "12",
        stdin="Say hello\nin French.\n\n!!exit\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "user: Say hello\nin French." in r.stdout
    after = r.stdout.split("assistant:", 1)[1]
    assert after.split("user:")[0].strip()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_chat_in_tmux_with_multiline_input(tmp_path):
    session = f"orchestr-chat-test-{os.getpid()}"
    saved = tmp_path / "tmux.json"
    cmd = (
        f"cd {REPO} && PYTHONPATH={REPO} {sys.executable} -m orchestr chat model=smollm2-135m "
        f"--multiline --temperature 0 --max-new-tokens 8; echo CHAT-EXITED; sleep 60"
    )
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", cmd], check=True)

    def screen() -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
        ).stdout

    def wait_for(text: str, timeout: float = 120, times: int = 1) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = screen()
            if s.count(text) >= times:
                return s
            time.sleep(0.3)
        raise AssertionError(f"{text!r} not on screen:\n{screen()}")

    def keys(*k: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", session, *k], check=True)

    try:
        wait_for("[Esc+Enter to send]")
        keys("Hello there,", "Enter", "who are you?", "Escape", "Enter")  # Enter: new line; Esc+Enter: send
        s = wait_for("assistant:")
        assert "Hello there,\nwho are you?" in s
        wait_for("[Esc+Enter to send]", times=2)  # the reply is done: prompted again
        keys(f"!!save {saved}", "Escape", "Enter")
        wait_for("saving to")
        keys("!!exit", "Escape", "Enter")
        wait_for("CHAT-EXITED")
        conv = json.loads(saved.read_text())
        assert conv["messages"][0] == {"role": "user", "content": "Hello there,\nwho are you?"}
        assert conv["messages"][1]["role"] == "assistant" and conv["messages"][1]["content"].strip()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
