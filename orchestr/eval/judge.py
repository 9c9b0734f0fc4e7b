"""The judge step (FastChat's gen_judgment, and arena-hard-auto's): render prompts, ask the judge,
parse, append durably.

Resume: every finished judgment is appended and fsynced at once; a rerun skips the matches already
in the output file (pairs in either order: FastChat's pair files resume too), so a killed run loses
nothing and duplicates nothing. Requests that still fail after the SDK's retries are counted, left
for the next run, and make the step exit non-zero. Every request goes through the judgment cache
and the cost meter (orchestr.eval.judge_cache).
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from tqdm import tqdm

from orchestr.eval import paths
from orchestr.eval.answers import Responder, StepCounts, api_or_local
from orchestr.eval.bench import load_answers, load_judge_prompts, load_questions, load_references
from orchestr.eval.client import ChatClient, RequestFailed, deployment_endpoint, resolve_api_key
from orchestr.eval.errors import EvalError
from orchestr.eval.judge_cache import BudgetExhausted, MeteredJudge
from orchestr.eval.matches import Match, build_matches, pair_key, single_key
from orchestr.eval.parallel import run_parallel
from orchestr.eval.parse import (
    parse_label,
    parse_score,
    parse_structured,
    parse_verdict,
    schema_instruction,
    verdict_schema,
)
from orchestr.eval.records import (
    JsonlAppender,
    arena_hard_record,
    pair_judgment_record,
    read_jsonl,
    single_judgment_record,
)


def judge_model_of(cfg: Any) -> str:
    return cfg.judge.model or cfg.model.name  # `self`: the model orchestr serves


def judge_name_of(cfg: Any) -> str:
    return cfg.judge.name or judge_model_of(cfg)


def judgment_path(cfg: Any):
    kind = {"single": "single", "arena-hard": "arena_hard"}.get(cfg.judge.mode, "pair")
    return paths.judgment_file(cfg.eval.data_dir, cfg.bench.name, judge_name_of(cfg), kind=kind)


def arena_hard_key(record: dict) -> tuple:
    return (str(record["question_id"]), tuple(sorted((record["model"], record["baseline"]))), 1, record["judge"][1])


def key_function(mode: str):
    return {"single": single_key, "arena-hard": arena_hard_key}.get(mode, pair_key)


def make_judge_client(cfg: Any) -> Responder:
    j = cfg.judge
    use_deployment = not j.endpoint
    client = ChatClient(
        j.endpoint or deployment_endpoint(cfg),
        resolve_api_key(j.api_key_env, cfg, use_deployment),
        judge_model_of(cfg),
        j.timeout_s,
        j.max_retries,
        own_deployment=use_deployment,
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


STRUCTURED = ("auto", "on", "off")


def structured_for(cfg: Any, responder: Any) -> bool:
    """Whether verdicts are asked for as schema-constrained JSON: `auto` does it for the in-process
    judge (whose sampler enforces the schema) and for orchestr's own deployment (whose API takes
    `response_format`), `on` for every judge endpoint."""
    mode = cfg.judge.structured
    if mode not in STRUCTURED:
        raise EvalError(f"judge.structured must be one of {', '.join(STRUCTURED)}, not {mode!r}")
    if mode == "off":
        return False
    local = not isinstance(responder, ChatClient)
    if mode == "auto" and not (local or responder.own_deployment):
        return False
    if local and "json_schema" not in inspect.signature(responder.chat).parameters:
        print("warning: the in-process model cannot constrain its output here; verdicts are free text")
        return False
    return True


def _kind(match: Match) -> str:
    return "arena-hard" if "A>>B" in match.prompt.output_format + match.prompt.system_prompt else \
        "single" if match.prompt.type == "single" else "pair"


def _ask(client: MeteredJudge, match: Match, user_prompt: str, cfg: Any) -> str:
    messages = []
    system = match.prompt.system_prompt
    schema = verdict_schema(_kind(match)) if client.structured else None
    if schema is not None:  # the verdict's form is the schema's, not the prompt's `[[...]]`
        system = f"{system}\n\n{schema_instruction(_kind(match))}".strip()
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user_prompt})
    return client.ask(match.prompt.name, messages, cfg.judge.temperature, cfg.judge.max_tokens, schema)


def _score(judgment: str) -> float:
    rating = parse_structured(judgment, "single")
    return float(rating) if rating is not None else parse_score(judgment)


def _verdict(judgment: str) -> str:
    return parse_structured(judgment, "pair") or parse_verdict(judgment)


def _label(judgment: str) -> str | None:
    return parse_structured(judgment, "arena-hard") or parse_label(judgment)


def _turns(answers: dict, model: str, qid: Any) -> list[str]:
    return answers[model][qid]["choices"][0]["turns"]  # FastChat judges the first choice


def judge_single(client: MeteredJudge, match: Match, answers: dict, cfg: Any) -> dict:
    (model,) = match.models
    user_prompt = render(match, _turns(answers, model, match.question["question_id"]), None)
    judgment = _ask(client, match, user_prompt, cfg)
    return single_judgment_record(
        match.question["question_id"],
        model,
        (judge_model_of(cfg), match.prompt.name),
        user_prompt,
        judgment,
        _score(judgment),
        match.turn,
    )


def judge_pair(client: MeteredJudge, match: Match, answers: dict, cfg: Any) -> dict:
    """Both answer orders; g1 has model_1 as assistant A, g2 swaps them (position-bias control)."""
    m1, m2 = match.models
    qid = match.question["question_id"]
    a1, a2 = _turns(answers, m1, qid), _turns(answers, m2, qid)
    p1 = render(match, a1, a2)
    j1 = _ask(client, match, p1, cfg)
    p2 = render(match, a2, a1)
    j2 = _ask(client, match, p2, cfg)
    g1 = {"A": "model_1", "B": "model_2"}.get(v := _verdict(j1), v)
    g2 = {"A": "model_2", "B": "model_1"}.get(v := _verdict(j2), v)
    return pair_judgment_record(qid, m1, m2, g1, g2, (judge_model_of(cfg), match.prompt.name), p1, j1, p2, j2, match.turn)


def judge_arena_hard(client: MeteredJudge, match: Match, answers: dict, cfg: Any) -> dict:
    """arena-hard-auto's two games: game 1 shows the baseline as A, game 2 the judged model as A."""
    model, baseline = match.models
    qid = match.question["question_id"]
    a_model, a_base = _turns(answers, model, qid)[:1], _turns(answers, baseline, qid)[:1]
    games = []
    for first, second in ((a_base, a_model), (a_model, a_base)):
        prompt = render(match, first, second)
        judgment = _ask(client, match, prompt, cfg)
        games.append({"user_prompt": prompt, "judgment": judgment, "score": _label(judgment)})
    return arena_hard_record(qid, match.question.get("category", "general"), model, baseline,
                             (judge_model_of(cfg), match.prompt.name), games)  # fmt: skip


def is_unparseable(record: dict) -> bool:
    if "games" in record:
        return any(g["score"] is None for g in record["games"])
    if "score" in record:
        return record["score"] == -1
    return "error" in (record["g1_winner"], record["g2_winner"])


RESUME_HINT = "rerun the same command to judge only what is missing (finished judgments are kept and cached)"


def run_judge(cfg: Any, client: Responder | None = None) -> StepCounts:
    j = cfg.judge
    questions = load_questions(cfg.bench)[: j.first_n] if j.first_n else load_questions(cfg.bench)
    answer_dir = paths.answer_dir(cfg.eval.data_dir, cfg.bench.name)
    answers = load_answers(answer_dir)
    models = list(j.models) if j.models else sorted(answers)
    missing = [m for m in models if m not in answers]
    if missing:
        raise EvalError(f"no answers for {', '.join(missing)} in {answer_dir} (judge.models); run the answer step first")
    if j.mode in ("pairwise-baseline", "arena-hard") and j.baseline_model not in answers:
        raise EvalError(
            f"{j.mode} needs answers of the baseline {j.baseline_model!r} in {answer_dir}\n"
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
    key_of = key_function(j.mode)
    judge_model = judge_model_of(cfg)
    done_keys = {key_of(r) for r in read_jsonl(out) if list(r.get("judge", []))[:1] == [judge_model]}
    todo = [m for m in matches if m.key not in done_keys]
    counts = StepCounts(skipped=len(matches) - len(todo))
    print(f"judge: {judge_model} ({j.mode}) on {cfg.bench.name}, models {', '.join(models)}: "
          f"{len(matches)} matches, {len(todo)} to judge -> {out}")
    if todo:
        responder = client or make_judge_client(cfg)
        judge = MeteredJudge(responder, cfg, structured_for(cfg, responder))
        play = {"single": judge_single, "arena-hard": judge_arena_hard}.get(j.mode, judge_pair)

        def failed(m: Match, e: Exception) -> None:
            counts.failed += 1
            tqdm.write(f"question {m.question['question_id']} turn {m.turn} {m.models}: {e}", file=sys.stderr)

        def done(m: Match, record: dict) -> None:
            sink.append(record)  # fsynced before the next one: the resume point
            counts.done += 1
            counts.unparseable += is_unparseable(record)

        try:
            with JsonlAppender(out) as sink:
                run_parallel(todo, lambda m: play(judge, m, answers, cfg), j.parallel, "judgments", done, failed,
                             (RequestFailed,))
        except BudgetExhausted as e:
            counts.stopped = str(e)
        finally:
            judge.close()
            print(f"judge: {judge.summary()}")
    counts.left = len(todo) - counts.done - counts.failed
    print(f"judge: {counts.line('judged')}")
    if counts.stopped:
        print(f"judge: stopped: {counts.stopped}; {counts.left} matches not judged. Raise judge.budget and "
              f"{RESUME_HINT}", file=sys.stderr)
    if counts.failed:
        print(f"judge: {counts.failed} of {len(todo)} matches failed; {RESUME_HINT}", file=sys.stderr)
    return counts
