"""The judge step (FastChat's gen_judgment): render prompts, ask the judge, parse, append durably.

Resume: every finished judgment is appended and fsynced at once; a rerun skips the matches already
in the output file, so a killed run loses nothing and duplicates nothing. Requests that still fail
after their retries are counted and left for the next run.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from orchestr.eval import paths
from orchestr.eval.answers import Responder, StepCounts, api_or_local
from orchestr.eval.bench import load_answers, load_judge_prompts, load_questions, load_references
from orchestr.eval.client import ChatClient, RequestFailed, RetryPolicy, deployment_endpoint, resolve_api_key
from orchestr.eval.errors import EvalError
from orchestr.eval.matches import Match, build_matches, pair_key, single_key
from orchestr.eval.parallel import run_parallel
from orchestr.eval.parse import parse_score, parse_verdict
from orchestr.eval.records import JsonlAppender, pair_judgment_record, read_jsonl, single_judgment_record


def judge_model_of(cfg: Any) -> str:
    return cfg.judge.model or cfg.model.name  # `self`: the model orchestr serves


def judge_name_of(cfg: Any) -> str:
    return cfg.judge.name or judge_model_of(cfg)


def judgment_path(cfg: Any):
    return paths.judgment_file(cfg.eval.data_dir, cfg.bench.name, judge_name_of(cfg), cfg.judge.mode != "single")


def make_judge_client(cfg: Any) -> Responder:
    j = cfg.judge
    use_deployment = not j.endpoint
    client = ChatClient(
        j.endpoint or deployment_endpoint(cfg),
        resolve_api_key(j.api_key_env, cfg, use_deployment),
        judge_model_of(cfg),
        j.timeout_s,
        RetryPolicy(j.max_retries, j.backoff_s, j.backoff_max_s),
    )
    # In-process judging is possible only for the model this config loads (`self`).
    is_self = use_deployment and judge_model_of(cfg) == cfg.model.name
    if j.backend == "local" and not is_self:
        raise EvalError("judge.backend=local judges with `model` itself: leave judge.model and judge.endpoint unset")
    return api_or_local(cfg, j.backend, "judge.backend", client, "judge.endpoint", is_self)


def render(match: Match, answer_a: list[str], answer_b: list[str] | None) -> str:
    """The user prompt: the template filled with the question, answer(s) and reference turns."""
    q = match.question["turns"]
    kw: dict[str, str] = {}
    if match.turn == 1:
        kw["question"] = q[0]
        if answer_b is None:
            kw["answer"] = answer_a[0]
        else:
            kw["answer_a"], kw["answer_b"] = answer_a[0], answer_b[0]
    else:
        kw["question_1"], kw["question_2"] = q[0], q[1]
        if answer_b is None:
            kw["answer_1"], kw["answer_2"] = answer_a[0], answer_a[1]
        else:
            kw["answer_a_1"], kw["answer_a_2"] = answer_a[0], answer_a[1]
            kw["answer_b_1"], kw["answer_b_2"] = answer_b[0], answer_b[1]
    if match.reference:
        for i, ref in enumerate(match.reference[:2], 1):
            kw[f"ref_answer_{i}"] = ref
    try:
        return match.prompt.prompt_template.format(**kw)
    except (KeyError, IndexError) as e:
        raise EvalError(f"judge prompt {match.prompt.name!r} uses a field this match does not have: {e}") from None


def _ask(client: Responder, match: Match, user_prompt: str, cfg: Any) -> str:
    messages = []
    if match.prompt.system_prompt:
        messages.append({"role": "system", "content": match.prompt.system_prompt})
    messages.append({"role": "user", "content": user_prompt})
    return client.chat(messages, cfg.judge.temperature, cfg.judge.max_tokens)


def _turns(answers: dict, model: str, qid: Any) -> list[str]:
    return answers[model][qid]["choices"][0]["turns"]  # FastChat judges the first choice


def judge_single(client: Responder, match: Match, answers: dict, cfg: Any) -> dict:
    (model,) = match.models
    user_prompt = render(match, _turns(answers, model, match.question["question_id"]), None)
    judgment = _ask(client, match, user_prompt, cfg)
    return single_judgment_record(
        match.question["question_id"],
        model,
        (judge_model_of(cfg), match.prompt.name),
        user_prompt,
        judgment,
        parse_score(judgment),
        match.turn,
    )


def judge_pair(client: Responder, match: Match, answers: dict, cfg: Any) -> dict:
    """Both answer orders; g1 has model_1 as assistant A, g2 swaps them (position-bias control)."""
    m1, m2 = match.models
    qid = match.question["question_id"]
    a1, a2 = _turns(answers, m1, qid), _turns(answers, m2, qid)
    p1 = render(match, a1, a2)
    j1 = _ask(client, match, p1, cfg)
    p2 = render(match, a2, a1)
    j2 = _ask(client, match, p2, cfg)
    g1 = {"A": "model_1", "B": "model_2"}.get(v := parse_verdict(j1), v)
    g2 = {"A": "model_2", "B": "model_1"}.get(v := parse_verdict(j2), v)
    return pair_judgment_record(qid, m1, m2, g1, g2, (judge_model_of(cfg), match.prompt.name), p1, j1, p2, j2, match.turn)


def _is_unparseable(record: dict) -> bool:
    if "score" in record:
        return record["score"] == -1
    return "error" in (record["g1_winner"], record["g2_winner"])


def run_judge(cfg: Any, client: Responder | None = None) -> StepCounts:
    j = cfg.judge
    pairwise = j.mode != "single"
    questions = load_questions(cfg.bench)[: j.first_n] if j.first_n else load_questions(cfg.bench)
    answer_dir = paths.answer_dir(cfg.eval.data_dir, cfg.bench.name)
    answers = load_answers(answer_dir)
    models = list(j.models) if j.models else sorted(answers)
    missing = [m for m in models if m not in answers]
    if missing:
        raise EvalError(f"no answers for {', '.join(missing)} in {answer_dir} (judge.models); run the answer step first")
    if j.mode == "pairwise-baseline" and j.baseline_model not in answers:
        raise EvalError(
            f"pairwise-baseline needs answers of the baseline {j.baseline_model!r} in {answer_dir}\n"
            f"  set judge.baseline_model=<one of: {', '.join(sorted(answers)) or 'none yet'}>"
        )
    if not models:
        raise EvalError(f"no model answers in {answer_dir}: run `orchestr eval eval.step=answer` first")
    if j.mode == "pairwise-all" and len(models) < 2:
        print(f"judge: pairwise-all needs answers of two models or more; {answer_dir} has {models}; nothing to judge")
        return StepCounts()

    prompts = load_judge_prompts(cfg.bench.judge_prompt_file)
    matches = build_matches(cfg, questions, answers, load_references(cfg.bench, questions), prompts, models)
    out = judgment_path(cfg)
    key_of = pair_key if pairwise else single_key
    judge_model = judge_model_of(cfg)
    done = {key_of(r) for r in read_jsonl(out) if list(r.get("judge", []))[:1] == [judge_model]}
    todo = [m for m in matches if m.key not in done]
    counts = StepCounts(skipped=len(matches) - len(todo))
    print(f"judge: {judge_model} ({j.mode}) on {cfg.bench.name}, models {', '.join(models)}: "
          f"{len(matches)} matches, {len(todo)} to judge -> {out}")
    if todo:
        client = client or make_judge_client(cfg)
        play = judge_pair if pairwise else judge_single

        def failed(m: Match, e: Exception) -> None:
            counts.failed += 1
            tqdm.write(f"question {m.question['question_id']} turn {m.turn} {m.models}: {e}", file=sys.stderr)

        def done(m: Match, record: dict) -> None:
            sink.append(record)  # fsynced before the next one: the resume point
            counts.done += 1
            counts.unparseable += _is_unparseable(record)

        with JsonlAppender(out) as sink:
            run_parallel(todo, lambda m: play(client, m, answers, cfg), j.parallel, "judgments", done, failed,
                         (RequestFailed,))
    print(f"judge: {counts.line('judged')}")
    return counts
