"""`orchestr train` on the embedded model: assistant-only masking on real token ids, arena votes
-> preference pairs, LoRA SFT killed with -9 and resumed, DPO margins, the trained folder served
through the API and answering the mini bench, and the multi-node dry run.

Runs are kept to a few dozen short steps (CPU, 2 cores): they check direction, not quality."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import openai
import pytest

from orchestr.arena.logs import ArenaLine, ConvLogWriter, ConvState
from orchestr.config import compose
from tests.conftest import ORCHESTR, free_ports

DUMMY = "fastchat/dummy_conversation.json"
DAY = dt.datetime(2024, 6, 1, 12, 0).timestamp()


# One torch thread: on a shared 2-core machine two threads of one op wait on each other.
ONE_THREAD = "train.num_threads=1"


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "ORCHESTR_RUNS_DIR": str(root / "runs"), "PYTHONUNBUFFERED": "1"}


def _log_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict[str, str]], name: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == name]


# --------------------------------------------------------------------------- masking


def test_sft_labels_ignore_every_user_and_system_token(shared_data: Path) -> None:
    from orchestr.train.recipes import build

    cfg = compose(["train=lora", f"train.data={shared_data / DUMMY}", "train.max_length=512",
                   "train.data_opts.max_examples=40", "train.output_dir=/nonexistent/never-written"])  # fmt: skip
    prep = build(cfg)
    tok = prep.tokenizer
    ds = prep.trainer.train_dataset
    checked = 0
    for row in ds:
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels)
        text = tok.decode(ids)
        if text.count("<|im_start|>assistant") < 2:
            continue  # look at multi-turn conversations
        # every kept label is its own token; every masked one is -100
        assert all(lab in (-100, t) for t, lab in zip(ids, labels, strict=True))
        kept = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100])
        masked = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab == -100])
        # rebuild the expected split from the rendered text: assistant bodies + end-of-turn are kept
        turns = text.split("<|im_start|>")[1:]
        want_kept = "".join(t.split("\n", 1)[1] for t in turns if t.startswith("assistant\n"))
        assert kept == want_kept
        assert "<|im_start|>system" in masked and "<|im_start|>user" in masked
        for t in turns:
            if t.startswith(("user\n", "system\n")):
                assert t.split("\n", 1)[1].removesuffix("<|im_end|>\n") in masked
        checked += 1
    assert checked >= 5


def test_conversations_load_from_sharegpt_openai_and_release_records(tmp_path: Path) -> None:
    from orchestr.train.data import DataReport, load_conversations

    records = [
        {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "dangling"}]},
        # a release record (orchestr clean step=release): OpenAI-format `conversation`
        {"conversation_id": "c", "model": "m", "conversation": [{"role": "user", "content": "Q"},
                                                                 {"role": "assistant", "content": "A"}]},
        {"conversations": [{"from": "gpt", "value": "lead-in"}, {"from": "human", "value": "Q2"},
                           {"from": "gpt", "value": "A2"}]},  # FastChat skips a first non-human turn
        {"conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "y"}]},  # not alternating
        {"text": "no conversation"},
    ]  # fmt: skip
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    report = DataReport()
    convs = load_conversations(str(path), report)
    assert convs == [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}],
    ]  # fmt: skip
    assert report.read == 6 and report.dropped == {"not_alternating_or_empty": 1, "unknown_format": 1}


def test_long_conversations_split_at_rounds_to_fit_max_length() -> None:
    from transformers import AutoTokenizer

    from orchestr.engine.loader import resolve_model_path
    from orchestr.train.data import DataReport, render, sft_examples, split_long_conversation

    tok = AutoTokenizer.from_pretrained(resolve_model_path("embedded://SmolLM2-135M-Instruct"))
    msgs = [{"role": "system", "content": "You answer in one sentence."}]
    for i in range(12):
        msgs += [{"role": "user", "content": f"Tell me fact number {i} about the sea."},
                 {"role": "assistant", "content": f"Fact {i}: the sea is salty and deep in places."}]  # fmt: skip
    pieces = split_long_conversation(tok, msgs, 120)
    assert len(pieces) > 2
    assert all(p[0] == msgs[0] for p in pieces)
    assert [m for p in pieces for m in p[1:]] == msgs[1:]  # every round once, in order
    assert all(len(tok(render(tok, p), add_special_tokens=False)["input_ids"]) <= 120 for p in pieces)
    examples = sft_examples(tok, [msgs], 120, "split", DataReport())
    assert len(examples) == len(pieces) and all(len(e["input_ids"]) <= 120 for e in examples)
    truncated = sft_examples(tok, [msgs], 120, "truncate", DataReport())
    assert len(truncated) == 1 and len(truncated[0]["input_ids"]) == 120


# --------------------------------------------------------------------------- arena pairs


def _vote(ts: float, winner_side: str, good_first: bool, q: str, good: str, bad: str) -> ArenaLine:
    sides = [("good-bot", good), ("poor-bot", bad)]
    if not good_first:
        sides.reverse()
    states = [ConvState(conv_id=uuid.uuid4().hex, model_name=m, messages=[["user", q], ["assistant", r]])
              for m, r in sides]  # fmt: skip
    return ArenaLine(tstamp=ts, type=winner_side, models=[m for m, _ in sides], states=states,
                     ip="10.1.1.1", anony=True)  # fmt: skip


@pytest.fixture(scope="module")
def arena_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 decisive votes for the bot that answers, 3 ties and 2 both-bad votes, as the web UI logs them."""
    d = tmp_path_factory.mktemp("arena") / "logs"
    w = ConvLogWriter(d)
    for i in range(24):
        a, b = i % 7 + 2, i % 5 + 3
        q = f"What is {a} plus {b}?"
        good, bad = f"{a} plus {b} is {a + b}.", "Sorry, I cannot help with numbers."
        good_first = i % 2 == 0
        w.write(_vote(DAY + i, "leftvote" if good_first else "rightvote", good_first, q, good, bad))
    for i in range(3):
        w.write(_vote(DAY + 100 + i, "tievote", True, f"Name a colour ({i}).", "Blue.", "Green."))
    for i in range(2):
        w.write(_vote(DAY + 200 + i, "bothbad_vote", True, f"Tell a joke ({i}).", "No.", "Maybe."))
    return d


def test_pairs_from_arena_logs_follow_the_votes(arena_logs: Path) -> None:
    from orchestr.train.data import DataReport, load_pairs

    cfg = compose([])
    report = DataReport()
    pairs = load_pairs(str(arena_logs), cfg.train.data_opts, cfg.clean.battles, report)
    assert len(pairs) == 24 and report.dropped == {"tie": 3, "bothbad": 2}
    for p in pairs:
        assert p["prompt"][-1]["role"] == "user" and len(p["prompt"]) == 1
        assert p["model_chosen"] == "good-bot" and p["model_rejected"] == "poor-bot"
        assert p["chosen"] == [{"role": "assistant", "content": p["chosen"][0]["content"]}]
        assert "plus" in p["chosen"][0]["content"] and "Sorry" in p["rejected"][0]["content"]

    cfg = compose(["train.data_opts.ties=both"])
    pairs = load_pairs(str(arena_logs), cfg.train.data_opts, cfg.clean.battles, DataReport())
    ties = [p for p in pairs if p["winner"] == "tie"]
    assert len(pairs) == 24 + 6 and len(ties) == 6
    assert {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in ties} == {("Blue.", "Green."), ("Green.", "Blue.")}


def test_multi_turn_battle_prompt_is_the_shared_history() -> None:
    from orchestr.train.data import DataReport, pairs_from_battles

    u1, u2 = {"role": "user", "content": "Hi"}, {"role": "user", "content": "And 2+2?"}
    a = [u1, {"role": "assistant", "content": "Hello."}, u2, {"role": "assistant", "content": "4"}]
    b = [u1, {"role": "assistant", "content": "Yo."}, u2, {"role": "assistant", "content": "5"}]
    same_start = [u1, {"role": "assistant", "content": "Hello."}, u2, {"role": "assistant", "content": "five"}]
    battles = [
        {"model_a": "x", "model_b": "y", "winner": "model_b", "conversation_a": a, "conversation_b": b},
        {"model_a": "x", "model_b": "z", "winner": "model_a", "conversation_a": a, "conversation_b": same_start},
    ]
    p1, p2 = pairs_from_battles(battles, "drop", "drop", DataReport())
    # replies differ from the first turn on: the whole conversations are compared
    assert p1["prompt"] == [u1] and p1["chosen"] == b[1:] and p1["rejected"] == a[1:]
    assert (p1["model_chosen"], p1["model_rejected"]) == ("y", "x")
    # the first reply is shared: the prompt runs up to the second user turn
    assert p2["prompt"] == a[:3] and p2["chosen"] == a[3:] and p2["rejected"] == same_start[3:]


@pytest.mark.slow
def test_dpo_on_arena_votes_grows_the_reward_margin(arena_logs: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpo"
    proc = subprocess.run([*ORCHESTR, "train", "train=dpo", f"train.data={arena_logs}", "train.max_steps=8",
                           f"train.output_dir={out}", "train.save_steps=100", "train.max_length=64",
                           "train.data_opts.eval_fraction=0", ONE_THREAD],
                          capture_output=True, text=True, timeout=1200, env=_env(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pairs = json.loads((out / "pairs.json").read_text())
    assert len(pairs) == 24 and all(p["model_chosen"] == "good-bot" for p in pairs)
    margins = [v for _, v in _series(_log_rows(out), "rewards/margins")]
    assert len(margins) == 8
    assert abs(margins[0]) < 1e-3  # policy == reference at the first step
    assert sum(margins[-3:]) / 3 > 0.1, margins
    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == 8 and results["method"] == "dpo"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


# --------------------------------------------------------------------------- LoRA SFT, kill -9, resume


@pytest.fixture(scope="module")
def lora_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`orchestr train train=lora ...` killed with SIGKILL after its first checkpoint, then re-run."""
    root = tmp_path_factory.mktemp("lora")
    out = root / "out"
    cmd = [*ORCHESTR, "train", "train=lora", f"train.data={shared_data / DUMMY}", "train.max_steps=16",
           f"train.output_dir={out}", "train.save_steps=4", "train.max_length=128",
           "train.data_opts.eval_max_examples=8", "train.run_name=smollm2-135m-lora", ONE_THREAD]  # fmt: skip
    log = root / "first-run.log"  # a file, not a pipe: the progress bar must never block the run
    with open(log, "w") as f:
        first = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(root), start_new_session=True)
    deadline = time.time() + 1200
    try:
        while not (out / "checkpoint-4" / "trainer_state.json").is_file():
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 20 minutes"
            time.sleep(0.5)
        time.sleep(1.0)  # let the checkpoint finish writing its last files
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert killed_at < 16
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=_env(root))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"out": out, "root": root, "killed_at": killed_at, "output": second.stdout + second.stderr}


@pytest.mark.slow
def test_lora_run_resumes_from_its_last_checkpoint_after_kill(lora_run: dict) -> None:
    out = lora_run["out"]
    assert f"resuming from {out / 'checkpoint-'}" in lora_run["output"]
    results = json.loads((out / "train_results.json").read_text())
    assert results["resumed_from_step"] >= 4 and results["global_step"] == 16
    rows = _log_rows(out)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    assert len(runs) == 2
    second_steps = [int(r["step"]) for r in rows if r["run"] == runs[1] and r["name"] == "loss"]
    assert min(second_steps) == results["resumed_from_step"] + 1 and max(second_steps) == 16


@pytest.mark.slow
def test_lora_loss_falls_and_held_out_loss_beats_the_base(lora_run: dict) -> None:
    out = lora_run["out"]
    losses = dict(_series(_log_rows(out), "loss"))  # the resumed run's value wins on repeated steps
    steps = sorted(losses)
    assert steps[0] == 1 and steps[-1] == 16
    first, last = [losses[s] for s in steps[:4]], [losses[s] for s in steps[-4:]]
    assert sum(last) / 4 < sum(first) / 4 * 0.8, losses
    results = json.loads((out / "train_results.json").read_text())
    assert results["eval_loss"] < results["eval_loss_base"], results
    # a plain model folder (LoRA merged), and a conf/model entry pointing at it
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    assert f"path: {out.resolve()}" in (out / "orchestr_model.yaml").read_text()


@pytest.mark.slow
def test_trained_model_serves_through_the_api_and_answers_the_bench(lora_run: dict) -> None:
    out, root = lora_run["out"], lora_run["root"]
    c, a, w = free_ports(3)
    env = _env(root)
    common = [f"launch.state_file={root / 'state.json'}"]
    launch = subprocess.run(
        [*ORCHESTR, "launch", f"model.path={out}", "model.name=smollm2-135m-lora", "launch.detach=true", *common,
         f"launch.log_dir={root / 'logs'}", f"services.controller.port={c}", f"services.api.port={a}",
         f"cluster.workers.worker-0.port={w}", "services.web.enabled=false",
         "services.worker.heart_beat_interval=5"],
        capture_output=True, text=True, timeout=900, env=env)  # fmt: skip
    try:
        assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{a}/v1", api_key="EMPTY")
        assert "smollm2-135m-lora" in {m.id for m in client.models.list().data}
        reply = client.chat.completions.create(
            model="smollm2-135m-lora", messages=[{"role": "user", "content": "Who are you?"}], max_tokens=24,
            temperature=0)  # fmt: skip
        assert reply.choices[0].message.content.strip()
        data = root / "eval"
        ev = subprocess.run(
            [*ORCHESTR, "eval", "eval.step=answer", "eval.answer.backend=api",
             f"eval.answer.endpoint=http://127.0.0.1:{a}/v1", "eval.answer.max_tokens=16",
             "model.name=smollm2-135m-lora", f"eval.data_dir={data}"],
            capture_output=True, text=True, timeout=900, env=env)  # fmt: skip
        assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
        answers = [json.loads(x) for x in
                   (data / "orchestr_mini" / "model_answer" / "smollm2-135m-lora.jsonl").read_text().splitlines()]
        assert len(answers) == 8 and all(any(t.strip() for t in ans["choices"][0]["turns"]) for ans in answers)
    finally:
        stop = subprocess.run([*ORCHESTR, "stop"], capture_output=True, text=True, timeout=180,
                              env={**env, "ORCHESTR_STATE_FILE": str(root / "state.json")})  # fmt: skip
        assert stop.returncode == 0, stop.stdout + stop.stderr


# --------------------------------------------------------------------------- SIGTERM: checkpoint and resume


@pytest.mark.slow
def test_sigterm_mid_training_saves_a_checkpoint_that_resumes(shared_data: Path, tmp_path: Path) -> None:
    """SIGTERM (a scheduler's stop) mid-run: the step under way finishes, a checkpoint of it is written
    although no save step was due, the resume line is printed, and the same command resumes from it."""
    out = tmp_path / "out"
    cmd = [*ORCHESTR, "train", "train=lora", f"train.data={shared_data / DUMMY}", "train.max_steps=200",
           f"train.output_dir={out}", "train.save_steps=1000", "train.max_length=64", "train.batch_size=1",
           "train.eval_before=false", "train.data_opts.eval_max_examples=2", "train.progress_bar=false",
           ONE_THREAD]  # fmt: skip
    log = tmp_path / "first-run.log"  # a file, not a pipe: the run's output never blocks it
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(tmp_path))
    try:
        deadline = time.time() + 600
        while not ((out / "log.csv").is_file() and _series(_log_rows(out), "loss")):  # training is on
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no training step within 10 minutes"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)  # one step (about a second here) and a checkpoint
    finally:
        proc.kill()
    text = log.read_text()
    assert proc.returncode == 143, text[-3000:]
    (checkpoint,) = out.glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert 1 <= step < 200 and json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert (checkpoint / "optimizer.pt").is_file() and not (out / "train_results.json").exists()
    assert f"interrupted (SIGTERM); the last checkpoint is {checkpoint}" in text, text[-3000:]
    assert "to resume from it (train.resume=auto), rerun: orchestr train train=lora" in text

    resumed = subprocess.run([*cmd, f"train.max_steps={step + 1}"], capture_output=True, text=True, timeout=900,
                             env=_env(tmp_path))  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from {checkpoint} (step {step})" in resumed.stdout
    assert json.loads((out / "train_results.json").read_text())["global_step"] == step + 1


# --------------------------------------------------------------------------- scale: dry run


def test_multi_node_dry_run_prints_one_torchrun_line_per_node(tmp_path: Path) -> None:
    proc = subprocess.run([*ORCHESTR, "train", "cluster=multi_node", "launch.dry_run=true", "train=lora",
                           "train.distributed.strategy=fsdp"],
                          capture_output=True, text=True, timeout=120, env=_env(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stdout.splitlines() if "torch.distributed.run" in x]
    assert len(lines) == 4
    for rank, line in enumerate(lines):
        assert f"--nnodes 4 --node-rank {rank} --nproc-per-node 4 --master-addr node-01 --master-port 29500" in line
        assert line.startswith("CUDA_VISIBLE_DEVICES=0,1,2,3 python3 -m torch.distributed.run")
        assert "-m orchestr.train.app cluster=multi_node train=lora train.distributed.strategy=fsdp" in line
        assert "dry_run" not in line
    assert "world size 16, master node-01:29500" in proc.stdout

    acc = subprocess.run([*ORCHESTR, "train", "cluster=multi_node", "launch.dry_run=true",
                          "train.distributed.launcher=accelerate", "train.distributed.strategy=deepspeed_zero3"],
                         capture_output=True, text=True, timeout=120, env=_env(tmp_path))  # fmt: skip
    lines = [x for x in acc.stdout.splitlines() if "accelerate.commands.launch" in x]
    assert [f"--machine_rank {r} --num_processes 16 --main_process_ip node-01" in x for r, x in enumerate(lines)] == [True] * 4

    one = subprocess.run([*ORCHESTR, "train", "launch.dry_run=true", "train=lora"],
                         capture_output=True, text=True, timeout=120, env=_env(tmp_path))  # fmt: skip
    assert "# one process on this machine" in one.stdout and "torch.distributed.run" not in one.stdout


def test_bad_train_key_value_is_a_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run([*ORCHESTR, "train", "train.method=ppo", "train.data=x.json"],
                          capture_output=True, text=True, timeout=120, env=_env(tmp_path))  # fmt: skip
    assert proc.returncode == 2
    assert "train.method='ppo'" in proc.stderr and "Traceback" not in proc.stderr
