"""Model loading, chat templates and streaming text helpers (real tokenizer, real files)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from orchestr.engine import loader
from orchestr.engine.detokenizer import IncrementalDetokenizer, StopStringMatcher
from orchestr.engine.loader import ModelLoadError, load_model, resolve_model_path
from orchestr.engine.templates import ChatFormatter, TemplateError, get_template

EMBEDDED = "embedded://SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def folder() -> str:
    return resolve_model_path(EMBEDDED)


@pytest.fixture(scope="module")
def tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_embedded_resolves_to_cached_safetensors_folder(folder):
    path = Path(folder)
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file()
    assert path.parent == loader.models_cache_dir()
    start = time.monotonic()
    assert resolve_model_path(EMBEDDED) == folder  # cached: no second conversion
    assert time.monotonic() - start < 1.0
    assert resolve_model_path(folder) == str(path.resolve())  # a local HF folder as is


def test_hub_id_fails_fast_with_a_clear_message():
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_model("some-org/not-a-real-model-xyz", device="cpu")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("path,msg", [("/no/such/folder", "no such file"), ("embedded://Nope", "unknown embedded"),
                                      ("bad id with spaces", "neither a local path")])
def test_bad_paths(path, msg):
    with pytest.raises(ModelLoadError, match=msg):
        resolve_model_path(path)


def test_dtype_auto_follows_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert loader.cpu_has_native_bf16() == native
    assert loader.resolve_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert loader.resolve_dtype("float32", "cpu") == torch.float32
    assert loader.resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        loader.resolve_dtype("int3", "cpu")


def test_explicit_dtype_is_honoured():
    model, _ = load_model(EMBEDDED, device="cpu", dtype="float32")
    assert next(model.parameters()).dtype == torch.float32
    assert loader.context_length(model) == 8192


@pytest.mark.slow
def test_concurrent_conversions_share_one_result(tmp_path):
    """Two processes converting the same GGUF into an empty cache: one converts under the lock,
    the other waits and reuses it; no temp folder is left behind."""
    gguf = loader.embedded_gguf("SmolLM2-135M-Instruct")
    env = dict(os.environ, ORCHESTR_CACHE_DIR=str(tmp_path))
    code = ("import sys; from orchestr.engine.loader import resolve_model_path; "
            "print(resolve_model_path(sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(gguf)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and Path(outs[0]).parent == tmp_path / "models"
    entries = sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock"))
    assert entries == [Path(outs[0]).name]
    model, tok = load_model(outs[0], device="cpu", dtype="float32")
    assert tok("hello")["input_ids"]


# --------------------------------------------------------------------------- templates


def test_tokenizer_chat_template_is_used(tokenizer):
    fmt = ChatFormatter(tokenizer)
    assert fmt.name == "tokenizer"
    prompt = fmt.format([{"role": "user", "content": "Hi there"}])
    assert prompt.text.endswith("<|im_start|>assistant\n") and "Hi there" in prompt.text
    assert prompt.add_special_tokens is False


def test_vicuna_and_llama2_fallbacks(tokenizer):
    msgs = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "How are you?"}]
    vicuna = ChatFormatter(tokenizer, "vicuna_v1.1").format(msgs).text
    assert vicuna == (get_template("vicuna_v1.1").system + " USER: Hello ASSISTANT: Hi!</s>USER: How are you? ASSISTANT:")
    llama = ChatFormatter(tokenizer, "llama-2").format([{"role": "system", "content": "Be brief."}, *msgs]).text
    assert llama == ("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello [/INST] Hi! </s><s>[INST] How are you? [/INST]")
    with pytest.raises(TemplateError, match="alternate"):
        ChatFormatter(tokenizer, "llama-2").format([{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="unknown conversation template"):
        get_template("nope")


def test_tokenizer_without_template_falls_back_to_generic(tokenizer):
    class NoTemplate:
        chat_template = None

        def convert_tokens_to_ids(self, t):
            return tokenizer.convert_tokens_to_ids(t)

    prompt = ChatFormatter(NoTemplate()).format([{"role": "user", "content": "Hi"}])
    assert prompt.text.endswith("Assistant:") and "\nUser:" in prompt.stop


# --------------------------------------------------------------------------- streaming text


def test_incremental_detokenizer_handles_multibyte_and_spaces(tokenizer):
    text = "Héllo wörld — 你好, 🙂🚀 ok  double  spaces."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.step(ids[: i + 1]) for i in range(len(ids))]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def test_stop_matcher_holds_back_partial_stop():
    m = StopStringMatcher(["###", "END"])
    assert m.holdback("abc#") == 1 and m.holdback("abc##") == 2 and m.holdback("abcE") == 1
    assert m.holdback("abc") == 0
    assert m.find("hello ##", 0) == -1 and m.find("hello ###", 7) == 6


def test_engine_streams_multibyte_output(tokenizer):
    """A prompt asking for emoji through the engine: no replacement characters in deltas."""
    from orchestr.config.serving import EngineConfig
    from orchestr.engine.engine import Engine
    from orchestr.protocol import ChatMessage, GenerateRequest

    model, tok = load_model(EMBEDDED, device="cpu", dtype="float32")
    engine = Engine(model, tok, EngineConfig(kv_cache_tokens=2048)).start()
    try:
        async def run():
            parts = []
            req = GenerateRequest(model="m", temperature=0, max_new_tokens=40, messages=[
                ChatMessage(role="user", content="Reply with five emoji about the sea and the word 'café'.")])
            async for chunk in engine.generate_stream(req):
                parts.append(chunk.text)
            return parts

        parts = asyncio.run(run())
        assert all("\ufffd" not in p for p in parts)
        assert "".join(parts)
    finally:
        engine.shutdown()
