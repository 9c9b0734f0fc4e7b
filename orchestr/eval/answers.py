"""The answer step (FastChat's gen_model_answer / gen_api_answer): every question, every turn,
`num_choices` times, from an OpenAI-compatible endpoint or a model loaded in this process."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm import tqdm

from orchestr.eval import paths
from orchestr.eval.bench import load_questions
from orchestr.eval.client import (
    ChatClient,
    EndpointUnreachable,
    RequestFailed,
    deployment_endpoint,
    resolve_api_key,
)
from orchestr.eval.errors import EvalError
from orchestr.eval.parallel import run_parallel
from orchestr.eval.records import JsonlAppender, answer_record, read_jsonl, write_jsonl


class Responder(Protocol):
    def chat(self, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str: ...


@dataclass
class StepCounts:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    unparseable: int = 0
    left: int = 0  # not attempted (the run was stopped, e.g. by the budget)
    stopped: str = ""  # why the run stopped early, if it did

    @property
    def incomplete(self) -> bool:
        return bool(self.failed or self.left or self.stopped)

    def line(self, verb: str) -> str:
        extra = f" ({self.unparseable} unparseable)" if self.unparseable else ""
        return f"{verb} {self.done}{extra}, failed {self.failed}, skipped {self.skipped} (already done)"


def model_id_of(cfg: Any) -> str:
    return cfg.eval.answer.model_id or cfg.model.name


BACKENDS = ("auto", "api", "local")


_local: dict[str, Responder] = {}


def local_responder(cfg: Any) -> Responder:
    """The in-process model, loaded once per process (answer and judge steps of one run share it)."""
    from orchestr.eval.local import LocalResponder  # imports torch: only when asked for

    if cfg.model.name not in _local:
        _local[cfg.model.name] = LocalResponder(cfg)
    return _local[cfg.model.name]


def api_or_local(cfg: Any, backend: str, key: str, client: ChatClient, setting: str, local_ok: bool) -> Responder:
    """`api`: the endpoint; `local`: the model in-process; `auto`: the endpoint when it answers, else
    (for the deployment's own model) the model in-process, so `orchestr eval` works without a deployment."""
    if backend not in BACKENDS:
        raise EvalError(f"{key} must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "local":
        return local_responder(cfg)
    if backend == "auto" and local_ok:
        try:
            client.check(setting, attempts=1)
            return client
        except EndpointUnreachable:
            print(f"no server at {client.base_url}: loading {cfg.model.name} in this process ({key}=auto)")
            return local_responder(cfg)
    client.check(setting)
    return client


def make_responder(cfg: Any) -> Responder:
    a = cfg.eval.answer
    use_deployment = not a.endpoint
    client = ChatClient(
        a.endpoint or deployment_endpoint(cfg),
        resolve_api_key(a.api_key_env, cfg, use_deployment),
        cfg.model.name,
        a.timeout_s,
        a.max_retries,
    )
    return api_or_local(cfg, a.backend, "eval.answer.backend", client, "eval.answer.endpoint", use_deployment)


def temperature_for(cfg: Any, category: str) -> float:
    if cfg.eval.answer.temperature is not None:
        return float(cfg.eval.answer.temperature)
    return float(cfg.bench.temperatures.get(category, cfg.bench.default_temperature))


def answer_question(responder: Responder, question: dict, num_choices: int, temperature: float, max_tokens: int) -> list[list[str]]:
    """All turns of one question, once per choice; each turn sees the conversation so far."""
    choices = []
    for _ in range(num_choices):
        messages: list[dict[str, str]] = []
        turns = []
        for user_turn in question["turns"]:
            messages.append({"role": "user", "content": user_turn})
            output = responder.chat(messages, temperature, max_tokens).strip()
            messages.append({"role": "assistant", "content": output})
            turns.append(output)
        choices.append(turns)
    return choices


def run_answers(cfg: Any, responder: Responder | None = None) -> StepCounts:
    a = cfg.eval.answer
    questions = load_questions(cfg.bench, a.question_begin, a.question_end)
    model_id = model_id_of(cfg)
    out = paths.answer_file(cfg.eval.data_dir, cfg.bench.name, model_id)
    done_ids = {r.get("question_id") for r in read_jsonl(out)}
    todo = [q for q in questions if q["question_id"] not in done_ids]
    counts = StepCounts(skipped=len(questions) - len(todo))
    print(f"answers: {model_id} on {cfg.bench.name}: {len(todo)} to answer, {counts.skipped} already in {out}")
    if todo:
        responder = responder or make_responder(cfg)

        def answer(q: dict) -> list[list[str]]:
            return answer_question(responder, q, a.num_choices, temperature_for(cfg, q["category"]), a.max_tokens)

        def failed(q: dict, e: Exception) -> None:
            counts.failed += 1
            tqdm.write(f"question {q['question_id']}: {e}", file=sys.stderr)

        def done(q: dict, choices: list[list[str]]) -> None:
            sink.append(answer_record(q["question_id"], model_id, choices))
            counts.done += 1

        with JsonlAppender(out) as sink:
            run_parallel(todo, answer, a.parallel, "answers", done, failed, (RequestFailed,))
    reorganize(out)
    print(f"answers: {counts.line('answered')} -> {out}")
    if counts.failed:
        print(f"answers: {counts.failed} of {len(todo)} questions failed; rerun the same command to answer only "
              "those (finished answers are kept)", file=sys.stderr)
    return counts


def reorganize(path) -> None:
    """Sort by question_id and keep one answer per question (as FastChat's reorg_answer_file)."""
    records = read_jsonl(path)
    if not records:
        return
    by_q = {}
    for r in records:
        by_q[r["question_id"]] = r
    write_jsonl(path, [by_q[k] for k in sorted(by_q, key=lambda k: (str(type(k)), k))])
