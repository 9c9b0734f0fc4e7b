"""Schemas for `orchestr eval`: benches (`bench=`), judges (`judge=`) and the eval steps (`eval.*`).

Paths are relative to the working directory unless absolute; a `pkg:` prefix names a file shipped
inside the orchestr package (orchestr/eval/data/...), which is how the embedded bench works offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _default_temperatures() -> dict[str, float]:
    # FastChat's per-category sampling temperatures for MT-bench answers.
    return {
        "writing": 0.7,
        "roleplay": 0.7,
        "extraction": 0.0,
        "math": 0.0,
        "coding": 0.0,
        "reasoning": 0.0,
        "stem": 0.1,
        "humanities": 0.1,
        "arena-hard-200": 0.0,
    }


@dataclass
class JudgePromptNames:
    """Which prompt (by `name` in the prompt file) judges which kind of match."""

    single: str = "single-v1"
    single_ref: str = "single-math-v1"
    single_multi_turn: str = "single-v1-multi-turn"
    single_ref_multi_turn: str = "single-math-v1-multi-turn"
    pair: str = "pair-v2"
    pair_ref: str = "pair-math-v1"
    pair_multi_turn: str = "pair-v2-multi-turn"
    pair_ref_multi_turn: str = "pair-math-v1-multi-turn"


@dataclass
class BenchConfig:
    """One benchmark (`conf/bench/*.yaml`): its questions, references and judging defaults."""

    name: str = "orchestr_mini"  # also the folder under eval.data_dir for answers and judgments
    question_file: str = "pkg:orchestr_mini/question.jsonl"
    question_url: str | None = None  # where `orchestr eval-data` fetches question_file from
    # Reference answers (FastChat model-answer schema). Questions may also carry `reference`.
    reference_answer_file: str | None = None
    reference_answer_url: str | None = None
    ref_categories: list[str] = field(default_factory=lambda: ["math", "reasoning", "coding"])
    turns: int = 2  # turns judged per question (1 for single-turn benches)
    default_temperature: float = 0.7  # for categories missing from `temperatures`
    temperatures: dict[str, float] = field(default_factory=_default_temperatures)
    # None: orchestr's own judge prompts; or a judge_prompts.jsonl (e.g. FastChat's)
    judge_prompt_file: str | None = None
    judge_prompts: JudgePromptNames = field(default_factory=JudgePromptNames)


@dataclass
class JudgeConfig:
    """The LLM judge (`conf/judge/*.yaml`): any OpenAI-compatible chat endpoint."""

    name: str | None = None  # file stem of <name>_single.jsonl / <name>_pair.jsonl; None: `model`
    model: str | None = None  # model name at the endpoint; None: the model orchestr serves (`model.name`)
    endpoint: str | None = None  # base URL (…/v1); None: the orchestr deployment's API server
    api_key_env: str | None = None  # environment variable holding the key (e.g. OPENAI_API_KEY)
    # auto: the endpoint if it answers, else (judge = `model` itself) the model in-process | api | local
    backend: str = "auto"
    mode: str = "single"  # single | pairwise-baseline | pairwise-all | arena-hard
    baseline_model: str = "gpt-3.5-turbo"  # opponent of every model in pairwise-baseline and arena-hard
    models: list[str] | None = None  # model_ids to judge; None: every model with answers
    temperature: float = 0.0
    max_tokens: int = 2048
    parallel: int = 2  # concurrent judge requests
    max_retries: int = 5  # per request: the openai SDK's retries (exponential backoff, Retry-After; logged)
    timeout_s: float = 600.0  # per request
    first_n: int | None = None  # judge only the first N questions (debugging)
    # Judgment cache shared by every mode: nothing judged is paid for twice (null: off)
    cache: str | None = "${eval.data_dir}/judge_cache.jsonl"
    price_input_per_mtok: float = 0.0  # cost per million prompt tokens (for the run's cost line)
    price_output_per_mtok: float = 0.0  # cost per million completion tokens
    budget: float | None = None  # stop the run cleanly once it has cost this much (null: no cap)
    # Verdicts as JSON under a JSON-schema constraint, so every verdict parses: auto (the in-process
    # judge and orchestr's own deployment) | on (any endpoint, via response_format) | off (free text)
    structured: str = "auto"
    # MT-bench's reference categories without reference answers: error (false) or warn and judge
    allow_missing_reference: bool = False
    # arena-hard mode: the prompt, A>>B's weight, bootstrap rounds and interval
    arena_hard_prompt: str = "arena-hard-v1"
    strong_weight: int = 3  # a ">>" verdict counts as this many games (arena-hard-auto: 3)
    bootstrap_rounds: int = 100
    ci: float = 0.90  # arena-hard-auto's interval: the 5th to 95th percentile
    seed: int = 0


@dataclass
class AnswerConfig:
    """The answer step: who answers and how."""

    # auto: the endpoint if it answers, else `model` loaded in-process | api: the endpoint | local: in-process
    backend: str = "auto"
    endpoint: str | None = None  # base URL (…/v1); None: the orchestr deployment's API server
    api_key_env: str | None = None  # environment variable with the endpoint's key
    model_id: str | None = None  # name in the answer file; None: `model.name`
    num_choices: int = 1
    max_tokens: int = 1024
    temperature: float | None = None  # None: the bench's per-category temperatures
    parallel: int = 4  # concurrent questions
    question_begin: int | None = None  # slice of the question list (debugging)
    question_end: int | None = None
    max_retries: int = 5  # the openai SDK's retries (exponential backoff, Retry-After; logged)
    timeout_s: float = 600.0


@dataclass
class AgreementConfig:
    """Agreement between two judges (or a judge and human votes), as FastChat's compute_agreement."""

    files: list[str] = field(default_factory=list)  # two pairwise judgment/vote files
    judges: list[str] = field(default_factory=list)  # optional judge names inside (when one file holds both)
    turn: int | None = None  # 1 or 2; None: both


@dataclass
class DownloadConfig:
    """Pre-generated answers and judgments for `orchestr eval-data`."""

    base_url: str = "https://huggingface.co/spaces/lmsys/mt-bench/resolve/main/data"
    files: list[str] = field(
        default_factory=lambda: [
            "mt_bench/model_judgment/gpt-4_single.jsonl",
            "mt_bench/model_judgment/gpt-4_pair.jsonl",
        ]
    )  # paths under base_url and under eval.data_dir
    include_bench: bool = True  # also fetch the bench's question/reference files when missing
    timeout_s: float = 10.0
    overwrite: bool = False


@dataclass
class EvalConfig:
    step: str = "all"  # all (answer, judge, results) | answer | judge | results | agreement
    data_dir: str = "data"  # answers in <data_dir>/<bench>/model_answer, judgments in .../model_judgment
    answer: AnswerConfig = field(default_factory=AnswerConfig)
    results_dir: str | None = None  # CSV + PNG; None: <data_dir>/<bench>/results
    plot: bool = True
    # Move corrupt lines of the answer/judgment files to <file>.corrupt before running (else: an error)
    quarantine_corrupt: bool = False
    agreement: AgreementConfig = field(default_factory=AgreementConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
