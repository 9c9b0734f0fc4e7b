"""`orchestr clean` end to end, as a user runs it: the real CLI in a subprocess, on log folders
written in exactly the web UI's format (by the same writer), through Hydra (runs and multiruns)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from orchestr.arena.logs import ArenaLine, ChatLine, ConvLogWriter, ConvState
from orchestr.arena.ratings import leaderboard_from_logs
from orchestr.arena.synthetic import simulate_battles, write_arena_logs
from orchestr.config.clean import RatingsConfig

TRUE = {"strong": 1200, "middle": 1000, "weak": 800}
T0 = dt.datetime(2024, 7, 1, 8, 0).timestamp()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def orchestr_clean(tmp_path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("orchestr")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "orchestr"]
    env = {**os.environ, "ORCHESTR_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.run(
        [*cmd, "clean", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def web_logs(tmp_path) -> Path:
    """300 blind battles over three days plus the awkward lines real logs have."""
    log_dir = tmp_path / "web-logs"
    battles = simulate_battles(TRUE, 300, seed=9, tie_prob=0.1, start_tstamp=T0)
    for i, b in enumerate(battles):
        b["tstamp"] = T0 + i * 900  # spread over ~3 days -> three day files
    write_arena_logs(log_dir, battles)
    w = ConvLogWriter(log_dir)
    leak = [
        ConvState(
            conv_id="l1",
            model_name="strong",
            messages=[["user", "who are you"], ["assistant", "I am Vicuna, made by LMSYS."]],
        ),
        ConvState(
            conv_id="l2",
            model_name="weak",
            messages=[["user", "who are you"], ["assistant", "An assistant."]],
        ),
    ]
    w.write(ArenaLine.vote("leftvote", leak, True, tstamp=T0 + 60, ip="9.9.9.9"))
    pii = ConvState(
        conv_id="p1",
        model_name="middle",
        messages=[
            ["user", "email me at jane@corp.example or +1 415 555 0100"],
            ["assistant", "Noted, Jane."],
        ],
    )
    w.write(ChatLine(tstamp=T0 + 70, model="middle", start=T0, finish=T0 + 70, state=pii, ip="9.9.9.9"))
    return log_dir


def test_logs_to_leaderboard_files_via_cli(tmp_path, web_logs):
    out = tmp_path / "out"
    proc = orchestr_clean(
        tmp_path, f"services.web.log_dir={web_logs}", f"output_dir={out}", "ratings.bootstrap_rounds=30"
    )
    stdout = proc.stdout
    assert "[battles] read 301, kept 300, dropped 1 (identity_leak: 1)" in stdout
    assert "#battles: 300, #anony: 300, #models: 3" in stdout
    assert "[ratings] read 300, kept 300, dropped 0" in stdout
    assert "Traceback" not in proc.stderr

    battles = json.loads((out / "clean_battle.json").read_text())
    assert len(battles) == 300 and {
        "model_a",
        "model_b",
        "winner",
        "judge",
        "turn",
        "anony",
        "language",
        "tstamp",
    } <= set(battles[0])
    table = pd.read_csv(out / "leaderboard.csv")
    assert list(table["model"]) == ["strong", "middle", "weak"]
    assert list(table["rank"]) == [1, 2, 3] and table["votes"].sum() == 600
    assert (table["ci_lower"] < table["rating"]).all() and (table["rating"] < table["ci_upper"]).all()
    md = (out / "leaderboard.md").read_text()
    assert md.startswith("| Rank | Model | Rating | 95% CI | Votes |") and "| 1 | strong |" in md
    for png in ("win_fraction.png", "battle_count.png", "rating_ci.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, png
    assert "| 1 | strong |" in stdout  # the table is printed too

    # Per-category leaderboards beside the main one; style control as a switch on the same battles.
    assert (out / "leaderboard_turns_single.csv").is_file() and not (out / "leaderboard_turns_multi.csv").exists()
    styled = orchestr_clean(tmp_path, "step=ratings", f"output_dir={out}", "ratings.bootstrap_rounds=5",
                            "ratings.style_control=true", "ratings.plots=false")
    assert "style coefficients (logit per standardised feature): length " in styled.stdout

    # The web UI's leaderboard tab computes the same numbers from the same folder.
    web = leaderboard_from_logs(web_logs, ratings_cfg=RatingsConfig(bootstrap_rounds=30))
    pd.testing.assert_frame_equal(
        web.reset_index(drop=True), table, check_dtype=False, check_exact=False, atol=0.051
    )


def test_conv_release_preset_and_release_pipeline(tmp_path, web_logs):
    out = tmp_path / "out"
    common = [f"services.web.log_dir={web_logs}", f"output_dir={out}"]
    orchestr_clean(tmp_path, "clean=conv_release", *common)
    conv = json.loads((out / "clean_battle_conv.json").read_text())
    assert len(conv) == 300 and conv[0]["conversation_a"][0]["role"] == "user"

    proc = orchestr_clean(tmp_path, "step=release", *common, "sample.n=4", "sample.by=[model]")
    for step in ("chats", "moderation", "pii", "blocked_words", "toxicity", "sample"):
        assert f"[{step}] read " in proc.stdout, step
    assert "[chats] read 601, kept 601" in proc.stdout  # both sides of 300 battles + the PII chat
    assert (
        "[pii] read 601, kept 601, dropped 0 tagged records_with_email: 1, records_with_phone: 1"
        in proc.stdout
    )
    scrubbed = (out / "chat_scrubbed.json").read_text()
    assert "jane@corp.example" not in scrubbed and "555 0100" not in scrubbed and "[EMAIL]" in scrubbed
    sample = json.loads((out / "chat_sample.json").read_text())
    assert len(sample) == 4 and all("openai_moderation" in r and "toxic" in r for r in sample)
    # Fixed seed: the same command gives the same sample.
    orchestr_clean(tmp_path, "step=sample", *common, "sample.n=4", "sample.by=[model]")
    assert json.loads((out / "chat_sample.json").read_text()) == sample


def test_release_presets_run_in_one_command(tmp_path, web_logs):
    out = tmp_path / "out"
    common = [f"services.web.log_dir={web_logs}", f"output_dir={out}"]
    proc = orchestr_clean(tmp_path, "clean=arena_conversations", *common)
    for step in ("battles", "moderation", "pii", "blocked_words", "toxicity"):
        assert f"[{step}] read " in proc.stdout, step
    assert "[moderation] read 300, kept 300" in proc.stdout  # the conv_release battles, not the chats
    release = json.loads((out / "arena_conv_release.json").read_text())
    assert release and all(r["anony"] and "openai_moderation" in r and "toxic" in r for r in release)
    assert "conversation_a" in release[0] and "conversation_b" in release[0]

    proc = orchestr_clean(tmp_path, "clean=all_conversations", *common, "sample.n=5")
    assert "[chats] read 601, kept 601" in proc.stdout and "[sample] read 601, kept 5" in proc.stdout
    assert "[moderation]" not in proc.stdout
    assert len(json.loads((out / "chat_sample.json").read_text())) == 5


def test_multirun_sweeps(tmp_path, web_logs):
    out = tmp_path / "out"
    common = [f"services.web.log_dir={web_logs}", f"output_dir={out}", "ratings.bootstrap_rounds=10"]
    proc = orchestr_clean(tmp_path, "-m", "step=battles,ratings", *common)
    assert "#0 : clean.step=battles" in proc.stdout and "#1 : clean.step=ratings" in proc.stdout
    assert (out / "clean_battle.json").is_file() and (out / "leaderboard.csv").is_file()

    # A sweep over a rating setting, each job writing its own folder.
    proc = orchestr_clean(
        tmp_path,
        "-m",
        "step=ratings",
        "ratings.rank_by=bt,elo",
        "ratings.output_dir=" + str(out) + "/${.rank_by}",
        *common,
    )
    bt, elo = pd.read_csv(out / "bt" / "leaderboard.csv"), pd.read_csv(out / "elo" / "leaderboard.csv")
    assert (bt["rating"] == bt["bt_rating"]).all() and (elo["rating"] == elo["elo_rating"]).all()
    assert list(bt["model"]) == list(elo["model"]) == ["strong", "middle", "weak"]
    assert len(list((tmp_path / "runs").rglob("multirun.yaml"))) == 2


def test_user_mistakes_are_reported_without_tracebacks(tmp_path, web_logs):
    proc = orchestr_clean(tmp_path, "step=everything", check=False)
    assert (
        proc.returncode == 2 and "unknown step 'everything'" in proc.stderr and "Traceback" not in proc.stderr
    )
    proc = orchestr_clean(
        tmp_path, f"battles.log_dirs=[{tmp_path}/nope]", f"output_dir={tmp_path}/o", check=False
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = orchestr_clean(tmp_path, "step=ratings", f"output_dir={tmp_path}/empty", check=False)
    assert proc.returncode == 2 and "run the step that writes it first" in proc.stderr
    proc = orchestr_clean(tmp_path, "ratings.elo_k=fast", check=False)
    assert proc.returncode != 0 and "elo_k" in proc.stderr
