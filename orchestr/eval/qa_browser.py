"""`orchestr qa-browser`: browse a bench's questions, model answers side by side, and the judgments.

    orchestr qa-browser bench=mt_bench judge=gpt-4 --port 7870

Reads FastChat's layout under eval.data_dir (so FastChat's pre-generated files work too).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from orchestr.eval import paths
from orchestr.eval.bench import load_answers, load_questions
from orchestr.eval.errors import exit_on_user_error
from orchestr.eval.judge import judge_name_of
from orchestr.eval.matches import record_turn
from orchestr.eval.records import read_jsonl


@dataclass
class BrowserData:
    """Everything the browser shows, indexed for lookups by question, model(s) and turn."""

    questions: list[dict]
    answers: dict[str, dict[Any, dict]]
    single: dict[tuple, dict] = field(default_factory=dict)  # (qid, model, turn) -> judgment
    pair: dict[tuple, dict] = field(default_factory=dict)  # (qid, model_1, model_2, turn) -> judgment

    @property
    def models(self) -> list[str]:
        return sorted(self.answers)

    @property
    def categories(self) -> list[str]:
        return ["all", *sorted({q["category"] for q in self.questions})]

    def question_choices(self, category: str) -> list[str]:
        return [_label(q) for q in self.questions if category in ("all", q["category"])]

    def question(self, label: str) -> dict | None:
        return next((q for q in self.questions if _label(q) == label), None)


def _label(q: dict) -> str:
    first = " ".join(str(q["turns"][0]).split())
    return f"{q['question_id']}: {first[:70]}{'…' if len(first) > 70 else ''}"


def load_browser_data(cfg: Any) -> BrowserData:
    data_dir, bench = cfg.eval.data_dir, cfg.bench.name
    data = BrowserData(load_questions(cfg.bench), load_answers(paths.answer_dir(data_dir, bench)))
    judge = judge_name_of(cfg)
    for r in read_jsonl(paths.judgment_file(data_dir, bench, judge, pairwise=False)):
        data.single[(str(r["question_id"]), r["model"], record_turn(r))] = r
    for r in read_jsonl(paths.judgment_file(data_dir, bench, judge, pairwise=True)):
        data.pair[(str(r["question_id"]), r["model_1"], r["model_2"], record_turn(r))] = r
    return data


def _answer_turns(data: BrowserData, model: str | None, qid: Any) -> list[str]:
    rec = data.answers.get(model or "", {}).get(qid)
    return list(rec["choices"][0]["turns"]) if rec else []


def question_markdown(q: dict) -> str:
    parts = [f"### Question {q['question_id']} ({q['category']})"]
    for i, t in enumerate(q["turns"], 1):
        parts.append(f"**Turn {i}:** {t}")
    if q.get("reference"):
        parts.append("**Reference:** " + " / ".join(str(r) for r in q["reference"]))
    return "\n\n".join(parts)


def answer_markdown(data: BrowserData, q: dict, model: str | None) -> str:
    turns = _answer_turns(data, model, q["question_id"])
    if not turns:
        return f"*{model or 'no model'} has no answer to this question*"
    return "\n\n".join(f"##### {model}, turn {i}\n{t}" for i, t in enumerate(turns, 1))


def pair_judgment_markdown(data: BrowserData, q: dict, model_a: str | None, model_b: str | None) -> str:
    qid = str(q["question_id"])
    parts = []
    for turn in (1, 2):
        r = data.pair.get((qid, model_a, model_b, turn))
        flipped = False
        if r is None:
            r, flipped = data.pair.get((qid, model_b, model_a, turn)), True
        if r is None:
            continue
        winners = {"model_1": r["model_1"], "model_2": r["model_2"]}
        g1, g2 = (winners.get(r[k], r[k]) for k in ("g1_winner", "g2_winner"))
        parts.append(
            f"#### Turn {turn}: {r['model_1']} vs {r['model_2']} (judge {r['judge'][0]}, {r['judge'][1]})"
            f"{' (stored in the other order)' if flipped else ''}\n\n"
            f"**Game 1** ({r['model_1']} as A): winner **{g1}**\n\n{r['g1_judgment']}\n\n"
            f"**Game 2** ({r['model_2']} as A): winner **{g2}**\n\n{r['g2_judgment']}"
        )
    return "\n\n---\n\n".join(parts) or "*no pairwise judgment for these two models*"


def single_judgment_markdown(data: BrowserData, q: dict, model: str | None) -> str:
    qid = str(q["question_id"])
    parts = []
    for turn in (1, 2):
        r = data.single.get((qid, model, turn))
        if r is not None:
            score = "unparseable" if r["score"] == -1 else r["score"]
            parts.append(f"#### Turn {turn}: score **{score}** (judge {r['judge'][0]}, {r['judge'][1]})\n\n{r['judgment']}")
    return "\n\n---\n\n".join(parts) or f"*no single-answer judgment for {model}*"


def build_demo(data: BrowserData, title: str):
    import gradio as gr

    models = data.models
    first_q = data.question_choices("all")
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\n{len(data.questions)} questions, {len(models)} models with answers")
        with gr.Row():
            category = gr.Dropdown(data.categories, value="all", label="Category")
            question = gr.Dropdown(first_q, value=first_q[0] if first_q else None, label="Question")
        question_md = gr.Markdown()
        with gr.Tab("Pairwise"):
            with gr.Row():
                model_a = gr.Dropdown(models, value=models[0] if models else None, label="Model A")
                model_b = gr.Dropdown(models, value=models[1] if len(models) > 1 else None, label="Model B")
            with gr.Row():
                answer_a = gr.Markdown(elem_id="answer_a")
                answer_b = gr.Markdown(elem_id="answer_b")
            pair_md = gr.Markdown(elem_id="pair_judgment")
        with gr.Tab("Single"):
            model_s = gr.Dropdown(models, value=models[0] if models else None, label="Model")
            answer_s = gr.Markdown(elem_id="answer_single")
            single_md = gr.Markdown(elem_id="single_judgment")

        def show(label: str | None, ma: str | None, mb: str | None, ms: str | None):
            q = data.question(label or "")
            if q is None:
                return ("*pick a question*",) + ("",) * 5
            return (
                question_markdown(q),
                answer_markdown(data, q, ma),
                answer_markdown(data, q, mb),
                pair_judgment_markdown(data, q, ma, mb),
                answer_markdown(data, q, ms),
                single_judgment_markdown(data, q, ms),
            )

        outputs = [question_md, answer_a, answer_b, pair_md, answer_s, single_md]
        inputs = [question, model_a, model_b, model_s]
        category.change(lambda c: gr.Dropdown(choices=data.question_choices(c), value=(data.question_choices(c) or [None])[0]),
                        category, question)
        for comp in inputs:
            comp.change(show, inputs, outputs)
        demo.load(show, inputs, outputs)
    return demo


def main() -> int:
    from orchestr.config import compose

    parser = argparse.ArgumentParser(prog="orchestr qa-browser", description=__doc__.strip().splitlines()[0],
                                     epilog="Other arguments are config overrides (bench=mt_bench judge=gpt-4 ...).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7870)
    parser.add_argument("--share", action="store_true")
    args, overrides = parser.parse_known_args()
    with exit_on_user_error("orchestr qa-browser"):
        cfg = compose(overrides)
        data = load_browser_data(cfg)
    if not data.answers:
        print(f"orchestr qa-browser: note: no answers yet in {paths.answer_dir(cfg.eval.data_dir, cfg.bench.name)}",
              file=sys.stderr)
    demo = build_demo(data, f"{cfg.bench.name} QA browser")
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["BrowserData", "build_demo", "load_browser_data", "main"]
