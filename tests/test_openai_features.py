"""Structured outputs, tools, logprobs, token-id prompts, tokenizer routes, the Responses API and
/metrics: the official openai SDK against the shared `orchestr launch` deployment (real
processes, embedded SmolLM2)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestr.secrets import bearer, service_secret

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        # bounded so that every answer fits max_tokens (an unbounded array can run past it)
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a timezone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 24}}, "required": ["tz"],
                   "additionalProperties": False}}}
SCHEMAS = {"get_weather": WEATHER["function"]["parameters"], "get_time": TIME["function"]["parameters"]}


@pytest.fixture(scope="module")
def client(deployment) -> openai.OpenAI:
    return openai.OpenAI(base_url=deployment.api_base, api_key="EMPTY", max_retries=0, timeout=300)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def person_format() -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


def test_json_schema_answers_validate_alongside_unconstrained_requests(client):
    results: dict[str, list] = {"plain": [], "constrained": [], "errors": []}

    def plain(i: int) -> None:
        r = client.chat.completions.create(model=MODEL, messages=ask(f"Tell me a fact about number {i}."),
                                           max_tokens=24, temperature=0.8)
        results["plain"].append(r.choices[0].message.content)

    def constrained(i: int, stream: bool) -> None:
        kw = dict(model=MODEL, messages=ask(f"Describe person number {i} as JSON."), max_tokens=120,
                  temperature=1.0, seed=i, response_format=person_format())
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                           if c.choices)
        else:
            text = client.chat.completions.create(**kw).choices[0].message.content
        results["constrained"].append(text)

    def run(fn, *args):
        try:
            fn(*args)
        except Exception as e:  # reported below with the failing call
            results["errors"].append(repr(e))

    threads = [threading.Thread(target=run, args=(constrained, i, i % 2 == 1)) for i in range(20)]
    threads += [threading.Thread(target=run, args=(plain, i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not results["errors"], results["errors"]
    assert len(results["constrained"]) == 20 and len(results["plain"]) == 4
    for text in results["constrained"]:
        jsonschema.validate(json.loads(text), PERSON)
    # json_object: any JSON object; the completions route too
    # json_object bounds nothing: an answer that ended (not cut by max_tokens) parses
    obj = client.chat.completions.create(model=MODEL, messages=ask('Reply with {"ok": true}.'), max_tokens=200,
                                         temperature=0, response_format={"type": "json_object"})
    assert obj.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    comp = client.completions.create(model=MODEL, prompt="A person as JSON:", max_tokens=100, temperature=0,
                                     extra_body={"response_format": person_format()})
    jsonschema.validate(json.loads(comp.choices[0].text), PERSON)


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_calls_validate(client, stream):
    for choice in ({"type": "function", "function": {"name": "get_time"}}, "required"):
        kw = dict(model=MODEL, messages=ask("What's the weather in Paris, and the time in Tokyo?"),
                  tools=[WEATHER, TIME], tool_choice=choice, max_tokens=120, temperature=0.7)
        if stream:
            calls: dict[int, dict] = {}
            finish = None
            for c in client.chat.completions.create(stream=True, **kw):
                if not c.choices:
                    continue
                for tc in c.choices[0].delta.tool_calls or []:
                    entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                    entry["name"] += tc.function.name or ""
                    entry["arguments"] += tc.function.arguments or ""
                finish = c.choices[0].finish_reason or finish
            got = list(calls.values())
            assert finish == "tool_calls"
        else:
            r = client.chat.completions.create(**kw)
            assert r.choices[0].finish_reason == "tool_calls"
            got = [{"name": tc.function.name, "arguments": tc.function.arguments}
                   for tc in r.choices[0].message.tool_calls]
        assert got
        for call in got:
            if isinstance(choice, dict):
                assert call["name"] == "get_time"
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_full_tool_loop(client):
    messages = ask("What's the weather in Paris?")
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                           tool_choice="required", max_tokens=60, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21})})
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=30,
                                           temperature=0)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


def test_auto_without_template_support_falls_back_to_content(client):
    # SmolLM2's chat template renders no tools: auto answers in text
    r = client.chat.completions.create(model=MODEL, messages=ask("Say hello."), tools=[WEATHER],
                                       tool_choice="auto", max_tokens=12, temperature=0)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason in ("stop", "length")


def test_chat_logprobs_shapes_and_greedy_top1(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("Name a color."), max_tokens=8, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens  # one entry per sampled token
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.bytes == list(entry.token.encode())
        assert entry.top_logprobs[0].token == entry.token  # greedy: the sampled token is the top one
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
    assert "".join(e.token for e in content).startswith(r.choices[0].message.content)
    streamed = []
    for c in client.chat.completions.create(model=MODEL, messages=ask("Name a color."), max_tokens=8,
                                            temperature=0, logprobs=True, top_logprobs=2, stream=True):
        if c.choices and c.choices[0].logprobs:
            streamed += c.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in content]


def test_completion_logprobs_echo_and_token_prompts(client, deployment):
    root = deployment.api_base.removesuffix("/v1")
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=0,
                                  logprobs=2, echo=True)
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith("The capital of France is")
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing conditions the first token
    assert all(isinstance(v, float) for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    ids = httpx.post(root + "/tokenize", json={"model": MODEL, "prompt": "Hello there"}).json()
    assert ids["count"] == len(ids["tokens"]) and ids["max_model_len"] > 0
    back = httpx.post(root + "/detokenize", json={"model": MODEL, "tokens": ids["tokens"]}).json()
    assert back["prompt"] == "Hello there"
    info = httpx.get(root + "/tokenizer_info").json()
    assert info["eos_token"] and info["tokenizer_class"]
    by_text = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=5, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=ids["tokens"], max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    emb = client.embeddings.create(model=MODEL, input=[ids["tokens"]])
    assert len(emb.data) == 1
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model=MODEL, input="hi", dimensions=8)
    stream_lps = []
    for c in client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=3,
                                       temperature=0, logprobs=1, echo=True, stream=True):
        if c.choices and c.choices[0].logprobs:
            stream_lps += c.choices[0].logprobs.tokens
    assert stream_lps == lp.tokens


def test_logit_bias_and_unsupported_parameters(client, deployment):
    tok = httpx.post(deployment.api_base.removesuffix("/v1") + "/tokenize", json={"model": MODEL, "prompt": " banana"}).json()["tokens"]
    r = client.completions.create(model=MODEL, prompt="My favourite fruit is", max_tokens=4, temperature=0,
                                  logit_bias={str(tok[0]): 100})
    assert r.choices[0].text.startswith(" banana")
    with pytest.raises(openai.BadRequestError, match="functions"):
        client.chat.completions.create(model=MODEL, messages=ask("hi"), extra_body={"functions": []})


def test_final_stream_delta_is_empty(deployment):
    body = {"model": MODEL, "messages": ask("hi"), "max_tokens": 3, "stream": True}
    with httpx.stream("POST", deployment.api_base + "/chat/completions", json=body, timeout=120) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    last = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]][-1]
    assert last["choices"][0]["delta"] == {}


def test_responses_api(client):
    first = client.responses.create(model=MODEL, input="Say hello.", instructions="Be brief.", max_output_tokens=12)
    assert first.output_text and first.status in ("completed", "incomplete")
    assert first.usage.output_tokens <= 12
    follow = client.responses.create(model=MODEL, input="Again, please.", previous_response_id=first.id,
                                     max_output_tokens=12)
    assert follow.output_text
    events = list(client.responses.create(model=MODEL, input=[{"role": "user", "content": "Say hi."}],
                                          max_output_tokens=8, stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text
    structured = client.responses.create(model=MODEL, input="A person.", max_output_tokens=100,
                                         text={"format": {"type": "json_schema", "name": "person", "schema": PERSON,
                                                          "strict": True}})
    jsonschema.validate(json.loads(structured.output_text), PERSON)


def _secret(deployment) -> str | None:
    """The deployment's service secret (internal services' /metrics want it), from launch's state."""
    path = json.loads(deployment.state_file.read_text()).get("secret_file")
    return Path(path).read_text().strip() if path else service_secret()


def _scrape(url: str, secret: str | None) -> dict[str, float]:
    r = httpx.get(url + "/metrics", headers=bearer(secret), timeout=30)
    assert r.status_code == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.labels.get("model_name", MODEL) == MODEL:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def test_metrics_parse_and_count_what_the_api_reported(deployment, client):
    worker = f"http://127.0.0.1:{deployment.ports['worker-0']}"
    secret = _secret(deployment)
    for url in (deployment.controller_url, worker, deployment.api_base.removesuffix("/v1")):
        assert _scrape(url, secret)  # parses with prometheus_client's own parser
    before = _scrape(worker, secret)
    prompt = completion = 0
    for i in range(3):
        r = client.chat.completions.create(model=MODEL, messages=ask(f"Count to {i + 2}."), max_tokens=6,
                                           temperature=0)
        prompt += r.usage.prompt_tokens
        completion += r.usage.completion_tokens
    after = _scrape(worker, secret)
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == prompt
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == completion
    ttft = "vllm:time_to_first_token_seconds_count"
    assert after[ttft] - before[ttft] == 3
    api = _scrape(deployment.api_base.removesuffix("/v1"), None)  # the API's /metrics is open
    assert any(k.startswith("orchestr:http_requests") for k in api)
    # each request counted under its route, model and status (streams too), and a bad one as a 4xx
    stream = client.chat.completions.create(model=MODEL, messages=ask("Hi."), max_tokens=3, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=ask("Hi."), max_tokens=-1)
    text = httpx.get(deployment.api_base.removesuffix("/v1") + "/metrics", timeout=30).text
    counted = {(s.labels["route"], s.labels["model"], s.labels["status"]): s.value
               for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "orchestr:http_requests_total" and s.labels["service"] == "api"}
    assert counted[("/v1/chat/completions", MODEL, "200")] >= 4
    assert any(route == "/v1/chat/completions" and status.startswith("4") for route, _, status in counted)
