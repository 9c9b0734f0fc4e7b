"""OpenVINO GenAI as an orchestr engine: worker arguments -> pipeline settings, GenerateRequest ->
GenerationConfig, and a streaming adapter over ``ContinuousBatchingPipeline``.

The pipeline is driven by one thread that owns it: it adds queued requests, runs ``step()``
(one batched forward of every running sequence) and hands each request's new token ids to its
asyncio consumer, which detokenizes, applies stop strings and counts tokens with orchestr's own
helpers (the same as the transformers engine). A consumer that goes away (client disconnect)
queues a cancel, which frees the sequence's KV blocks before the next step.

openvino-genai is optional: nothing here imports it at module import time; the mapping
functions are plain dicts, tested without it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import queue
import random
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from orchestr.engine import prompts
from orchestr.engine.prompts import RenderedPrompt, RequestError, refuse_unsupported, render_prompt
from orchestr.protocol import (
    CountTokenRequest,
    CountTokenResult,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorCode,
    GenerateChunk,
    GenerateRequest,
    ModelDetails,
    TokenizeRequest,
    TokenizeResponse,
    UsageInfo,
)

log = logging.getLogger("orchestr.openvino_worker")

INSTALL_HINT = ("the OpenVINO worker needs openvino-genai: pip install 'orchestr[openvino]' "
                "(scripts/setup_openvino.sh also builds the exporter's .venv-openvino)")
GREEDY_EPS = 1e-5
# KV-cache block size of OpenVINO's CPU plugin: --kv-cache-tokens becomes a number of blocks.
CPU_KV_BLOCK_TOKENS = 32
_PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
# of prompts.OPTIONAL_FEATURES: JSON-schema constrained output maps to OpenVINO's
# StructuredOutputConfig; logprobs and logit_bias have no OpenVINO counterpart (refused, 400)
SUPPORTED_FEATURES = frozenset({"guided_json"})


class OpenVinoMissing(SystemExit):
    """openvino-genai cannot be imported; a SystemExit whose message is the one line to print."""


def import_openvino_genai() -> Any:
    try:
        import openvino_genai
    except ImportError as e:
        detail = "" if isinstance(e, ModuleNotFoundError) and e.name == "openvino_genai" else f" ({e})"
        raise OpenVinoMissing(INSTALL_HINT + detail) from None
    return openvino_genai


# ---------------------------------------------------------------------- pure mappings


def scheduler_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``SchedulerConfig`` attributes for the worker's engine flags (the transformers worker's
    names: one set of `engine.*` config keys for both backends)."""
    batching = getattr(args, "batching", True)
    return {
        "max_num_seqs": int(args.max_batch_size) if batching else 1,
        "max_num_batched_tokens": int(args.max_num_batched_tokens),
        "num_kv_blocks": -(-int(args.kv_cache_tokens) // CPU_KV_BLOCK_TOKENS),
        "cache_size": 0,  # 0: num_kv_blocks decides
        "dynamic_split_fuse": True,  # long prompts are prefilled in chunks beside running decodes
        "enable_prefix_caching": bool(getattr(args, "prefix_caching", False)),
    }


def plugin_properties(args: argparse.Namespace) -> dict[str, Any]:
    """CPU plugin properties: threads and precision (auto: OpenVINO's choice, bf16 on AMX CPUs;
    the KV cache then uses OpenVINO's default too, which may be 8-bit)."""
    props: dict[str, Any] = {}
    if args.num_threads:
        props["INFERENCE_NUM_THREADS"] = int(args.num_threads)
    precision = _PRECISIONS.get(args.dtype or "auto")
    if precision:
        props["INFERENCE_PRECISION_HINT"] = precision
        props["KV_CACHE_PRECISION"] = precision
    return props


def generation_settings(req: GenerateRequest, prompt_tokens: int, context_len: int,
                        stop: list[str], stop_token_ids: list[int]) -> dict[str, Any]:
    """``GenerationConfig`` attributes for one request. Raises ValueError when the prompt leaves
    no room in the context window."""
    room = context_len - prompt_tokens
    if room <= 0:
        raise ValueError(
            f"the prompt has {prompt_tokens} tokens, which fills the model's context of {context_len} tokens")
    greedy = req.temperature < GREEDY_EPS
    kw: dict[str, Any] = {
        "max_new_tokens": room if req.max_new_tokens is None else min(int(req.max_new_tokens), room),
        "do_sample": not greedy,
        "repetition_penalty": float(req.repetition_penalty),
        "presence_penalty": float(req.presence_penalty),
        "frequency_penalty": float(req.frequency_penalty),
        "stop_token_ids": set(stop_token_ids),
        # Matched in OpenVINO too (it then stops early); the text is cut here, as on every backend.
        "stop_strings": set(s for s in stop if s),
        "include_stop_str_in_output": True,
        "apply_chat_template": False,  # prompts arrive as token ids, already templated
    }
    if not greedy:
        kw["temperature"] = float(req.temperature)
        kw["top_p"] = min(max(float(req.top_p), GREEDY_EPS), 1.0)
        if req.top_k is not None and req.top_k > 0:
            kw["top_k"] = int(req.top_k)
        # OpenVINO's default seed is the same for every request; sampled requests without a
        # seed must not all draw the same numbers.
        kw["rng_seed"] = int(req.seed) if req.seed is not None else random.getrandbits(31)
    return kw


def finish_reason(name: str) -> str:
    """OpenVINO's finish reason (STOP, LENGTH, ...) in the wire protocol's terms."""
    return "length" if name.endswith("LENGTH") else "stop"


# ---------------------------------------------------------------------- the engine


class _Stepper(threading.Thread):
    """Owns the pipeline: adds and cancels requests between steps, steps while any run, and
    sends each request's outputs to its sink as ``(token_ids, finish_name | None, error)``."""

    def __init__(self, pipe: Any) -> None:
        super().__init__(name="orchestr-openvino-steps", daemon=True)
        self.pipe = pipe
        self.inbox: queue.Queue = queue.Queue()
        self.active: dict[int, tuple[Any, Callable]] = {}
        self.stopping = False

    def submit(self, item: tuple) -> None:
        self.inbox.put(item)

    def _drain(self) -> None:
        import numpy as np
        import openvino as ov

        block = not self.active
        while True:
            try:
                item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            if item[0] == "add":
                _, rid, ids, config, sink = item
                try:
                    handle = self.pipe.add_request(rid, ov.Tensor(np.array([ids], dtype=np.int64)), config)
                except Exception as exc:  # noqa: BLE001 - OpenVINO's own checks of the request
                    sink(([], None, ov_message(exc)))
                    continue
                self.active[rid] = (handle, sink)
            elif item[0] == "cancel":
                entry = self.active.pop(item[1], None)
                if entry is not None:
                    entry[0].cancel()
                    log.info("cancelled request %d before its end (client gone or stop string); %d running",
                             item[1], len(self.active))
            elif item[0] == "quit":
                self.stopping = True
                return

    def _collect(self) -> None:
        done = []
        for rid, (handle, sink) in self.active.items():
            while handle.can_read():
                for out in handle.read().values():
                    reason = out.finish_reason.name
                    sink((list(out.generated_ids), None if reason == "NONE" else reason, None))
            status = handle.get_status().name
            if status != "RUNNING":
                done.append(rid)
                if status == "IGNORED":
                    sink(([], None, "the request does not fit the KV cache (raise engine.kv_cache_tokens)"))
                else:
                    sink(([], "END", None))
        for rid in done:
            self.active.pop(rid, None)

    def run(self) -> None:
        while not self.stopping:
            self._drain()
            if self.stopping or not self.active:
                continue
            try:
                self.pipe.step()
            except Exception as exc:  # noqa: BLE001 - fail the running requests, keep serving
                log.exception("OpenVINO step failed")
                for handle, sink in self.active.values():
                    handle.cancel()
                    sink(([], None, f"OpenVINO step failed: {exc}"))
                self.active.clear()
                continue
            self._collect()
        for handle, sink in self.active.values():
            handle.cancel()
            sink(([], None, "the worker is shutting down"))


class OpenVinoEngine:
    """One model in OpenVINO GenAI's continuous-batching pipeline, with the interface
    worker_base expects: ``generate_stream``, ``count_tokens``, ``model_details``, ``shutdown``."""

    backend = "openvino"

    def __init__(self, args: argparse.Namespace, ir_folder: str | Path, model_name: str | None = None) -> None:
        ov_genai = import_openvino_genai()
        from transformers import AutoTokenizer

        from orchestr.engine.templates import ChatFormatter

        self.ir_folder = str(ir_folder)
        self.model_name = model_name or Path(self.ir_folder).name
        sched = ov_genai.SchedulerConfig()
        for key, value in scheduler_settings(args).items():
            setattr(sched, key, value)
        self.properties = plugin_properties(args)
        self.pipe = ov_genai.ContinuousBatchingPipeline(self.ir_folder, sched, "CPU", self.properties)
        self.tokenizer = AutoTokenizer.from_pretrained(self.ir_folder, trust_remote_code=args.trust_remote_code)
        self.formatter = ChatFormatter(self.tokenizer, getattr(args, "conv_template", None))
        self.context_len = int(args.max_model_len or _model_context(self.ir_folder))
        self.dtype = args.dtype if args.dtype in _PRECISIONS else "auto"
        self.device = "cpu"
        self.eos_ids = [t for t in _as_list(self.tokenizer.eos_token_id) if t is not None]
        self._ids = itertools.count(1)
        self._ov = ov_genai
        self.stepper = _Stepper(self.pipe)
        self.stepper.start()

    # ------------------------------------------------------------------ prompts
    def prompt_of(self, req: GenerateRequest | CountTokenRequest) -> RenderedPrompt:
        return render_prompt(self.formatter, self.tokenizer, req)

    def count_tokens(self, req: CountTokenRequest) -> CountTokenResult:
        return CountTokenResult(count=len(self.prompt_of(req).ids), context_length=self.context_len)

    def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        return prompts.tokenize(self.formatter, self.tokenizer, req, self.context_len)

    def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        return prompts.detokenize(self.tokenizer, req)

    def tokenizer_info(self) -> dict:
        return prompts.tokenizer_info(self.tokenizer, self.context_len)

    def model_details(self, name: str | None = None) -> ModelDetails:
        return ModelDetails(model=name or self.model_name, context_length=self.context_len, backend=self.backend,
                            dtype=self.dtype, device=self.device, tool_parser=self.formatter.tool_family)

    def generation_config(self, settings: dict[str, Any], guided_json: dict | None = None) -> Any:
        config = self._ov.GenerationConfig()
        if self.eos_ids:
            config.eos_token_id = self.eos_ids[0]
        for key, value in settings.items():
            setattr(config, key, value)
        if guided_json is not None:  # OpenVINO GenAI's own structured output (xgrammar inside)
            config.structured_output_config = self._ov.StructuredOutputConfig(json_schema=json.dumps(guided_json))
        config.validate()
        return config

    # ------------------------------------------------------------------ generation
    async def generate_stream(self, req: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Text deltas of one request; the last chunk carries ``finish_reason`` and usage.
        Closing the iterator early (client gone) cancels the request in the pipeline."""
        from orchestr.engine.detokenizer import IncrementalDetokenizer, StopStringMatcher

        try:
            refuse_unsupported(req, self.backend, SUPPORTED_FEATURES)
            prompt = self.prompt_of(req)
            text, ids, stops, stop_ids = prompt.text, prompt.ids, list(prompt.stop), list(prompt.stop_token_ids)
            stop = [*req.stop, *(s for s in stops if s not in req.stop)]
            stop_token_ids = [*req.stop_token_ids, *(t for t in [*stop_ids, *self.eos_ids] if t not in req.stop_token_ids)]
            settings = generation_settings(req, len(ids), self.context_len, stop, stop_token_ids)
        except RequestError as exc:
            yield GenerateChunk(error=str(exc), error_code=exc.code, finish_reason="error")
            return
        except ValueError as exc:
            yield GenerateChunk(error=str(exc), error_code=ErrorCode.CONTEXT_OVERFLOW, finish_reason="error")
            return
        try:
            config = self.generation_config(settings, req.guided_json)
        except Exception as exc:  # noqa: BLE001 - OpenVINO's validate() of the parameters
            yield GenerateChunk(error=ov_message(exc), error_code=ErrorCode.PARAM_OUT_OF_RANGE, finish_reason="error")
            return
        if req.echo:
            yield GenerateChunk(text=text)

        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        rid = next(self._ids)
        self.stepper.submit(("add", rid, ids, config, lambda item: loop.call_soon_threadsafe(inbox.put_nowait, item)))
        detok = IncrementalDetokenizer(self.tokenizer)
        matcher = StopStringMatcher(stop)
        stop_set = set(stop_token_ids)
        output: list[int] = []
        produced, emitted, ended = "", 0, False
        try:
            while True:
                new_ids, reason, error = await inbox.get()
                if error is not None:
                    ended = True
                    yield GenerateChunk(error=error, error_code=ErrorCode.INTERNAL_ERROR, finish_reason="error",
                                        usage=_usage(ids, output))
                    return
                output += new_ids
                ended = ended or reason is not None
                finish = None if reason in (None, "END") else finish_reason(reason)
                if reason == "END" and finish is None:
                    finish = "stop"
                text_ids = output[:-1] if finish == "stop" and output and output[-1] in stop_set else output
                produced += detok.step(text_ids, final=finish is not None)
                hit = matcher.find(produced, emitted)
                if hit != -1:
                    produced, finish = produced[:hit], "stop"
                upto = len(produced) if finish else len(produced) - matcher.holdback(produced)
                delta = produced[emitted:upto] if upto > emitted else ""
                emitted = max(emitted, upto)
                if finish:
                    yield GenerateChunk(text=delta, finish_reason=finish, usage=_usage(ids, output))
                    return
                if delta:
                    yield GenerateChunk(text=delta)
        finally:
            if not ended:  # client gone, stop string, or error: free the sequence's slot
                self.stepper.submit(("cancel", rid))

    def shutdown(self) -> None:
        self.stepper.submit(("quit",))
        self.stepper.join(timeout=30)


def ov_message(exc: BaseException) -> str:
    """OpenVINO's exception text without its source-location preamble: the last line that says something."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _usage(prompt: list[int], output: list[int]) -> UsageInfo:
    return UsageInfo(prompt_tokens=len(prompt), completion_tokens=len(output), total_tokens=len(prompt) + len(output))


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _model_context(folder: str, default: int = 2048) -> int:
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return default
    for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"):
        if isinstance(cfg.get(key), int) and cfg[key] > 0:
            return cfg[key]
    return default
