"""The engine's synchronous façade (terminal chat, in-process eval and judge) on the real model."""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest

from orchestr.config.serving import EngineConfig
from orchestr.engine.engine import Engine
from orchestr.engine.llm import LLM
from orchestr.engine.loader import load_model
from orchestr.engine.prompts import RequestError

MODEL = "embedded://SmolLM2-135M-Instruct"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "color": {"enum": ["red", "green", "blue"]}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm():
    model, tok = load_model(MODEL, device="cpu", dtype="float32")
    with LLM(Engine(model, tok, EngineConfig(max_batch_size=8, kv_cache_tokens=8192))) as facade:
        yield facade


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_concurrent_callers_match_one_at_a_time(llm):
    prompts = ["Name a fruit.", "Name a color.", "Name a city.", "Name an animal."]
    alone = [llm.chat(ask(p), temperature=0, max_tokens=12) for p in prompts]
    together: dict[int, str] = {}

    def run(i: int) -> None:
        together[i] = llm.chat(ask(prompts[i]), temperature=0, max_tokens=12)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [together[i] for i in range(len(prompts))] == alone


def test_stop_strings_and_streaming_cancel(llm):
    full = llm.chat(ask("Count from 1 to 20."), temperature=0, max_tokens=40)
    assert "3." in full
    cut = llm.chat(ask("Count from 1 to 20."), temperature=0, max_tokens=40, stop=["3."])
    assert cut == full.split("3.")[0]
    stream = llm.stream(llm.request(ask("Write a long story."), temperature=0, max_tokens=200))
    next(stream)
    stream.close()  # the engine drops the request
    for _ in range(100):
        if llm.engine.queue_length == 0:
            break
        threading.Event().wait(0.05)
    assert llm.engine.queue_length == 0


def test_json_schema_output_validates(llm):
    for seed in range(3):
        text = llm.chat(ask("Describe a person as JSON."), temperature=1.0, max_tokens=120, json_schema=PERSON,
                        seed=seed)
        jsonschema.validate(json.loads(text), PERSON)
    assert isinstance(json.loads(llm.chat(ask("Any JSON please."), temperature=0, max_tokens=60,
                                          json_schema={"type": "object"})), dict)


def test_refused_requests_raise_request_error(llm):
    with pytest.raises(RequestError):
        llm.chat(ask("hi"), temperature=0, max_tokens=4, logprobs=50)
    with pytest.raises(RequestError):
        llm.chat(ask("hi"), temperature=0, max_tokens=4, json_schema={"type": "nonsense-type"})
