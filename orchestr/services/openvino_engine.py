"""OpenVINO GenAI as an orchestr engine: worker arguments -> pipeline settings, GenerateRequest ->
GenerationConfig, and a streaming adapter over ``ContinuousBatchingPipeline``.

The pipeline lives in a child process that owns it (``step()`` holds the GIL for a whole
batched forward): it adds requests, runs ``step()`` and sends each step's new token ids back in
one message; the worker hands them to each request's asyncio consumer, which detokenizes,
applies stop strings and counts tokens with orchestr's own helpers (the same as the
transformers engine). A consumer that goes away (client disconnect) sends a cancel, which frees
the sequence's KV blocks before the next step.

openvino-genai is optional: nothing here imports it at module import time; the mapping
functions are plain dicts, tested without it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from orchestr.engine.prompts import PromptEndpoints, refusal_chunk, refuse_resumed_grammar, refuse_unsupported
from orchestr.protocol import (
    ErrorCode,
    GenerateChunk,
    GenerateRequest,
    UsageInfo,
)
from orchestr.services.worker_base import import_backend

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


def import_openvino_genai() -> Any:
    return import_backend("openvino_genai", INSTALL_HINT)


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
        "enable_prefix_caching": bool(getattr(args, "prefix_caching", True)),
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


def build_generation_config(ov_genai: Any, settings: dict[str, Any], eos_id: int | None,
                            guided_json: dict | None = None) -> Any:
    config = ov_genai.GenerationConfig()
    if eos_id is not None:
        config.eos_token_id = eos_id
    for key, value in settings.items():
        setattr(config, key, value)
    if guided_json is not None:  # OpenVINO GenAI's own structured output (xgrammar inside)
        config.structured_output_config = ov_genai.StructuredOutputConfig(json_schema=json.dumps(guided_json))
    config.validate()
    return config


def _pipeline_main(conn: Any, ir_folder: str, sched_settings: dict, properties: dict, eos_id: int | None) -> None:
    """The pipeline process: owns ``ContinuousBatchingPipeline``, adds and cancels requests
    between steps, steps while any run, and after each step sends one batch of
    ``(request id, new token ids, finish name | None, error | None)`` back.

    Why a process: ``step()`` holds the GIL for the whole batched forward (measured: a thread
    sleeping 1 ms got one turn per step), which would stall the worker's HTTP side for a step at
    a time and make every hand-over between the two cost a GIL switch interval.
    """
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    from orchestr.services.http_util import setup_logging

    plog = setup_logging("orchestr.openvino_pipeline")
    try:
        sched = ov_genai.SchedulerConfig()
        for key, value in sched_settings.items():
            setattr(sched, key, value)
        pipe = ov_genai.ContinuousBatchingPipeline(ir_folder, sched, "CPU", properties)
    except Exception as exc:  # noqa: BLE001 - reported to the worker, which exits with it
        conn.send(("failed", ov_message(exc)))
        return
    conn.send(("ready", None))
    active: dict[int, Any] = {}
    while True:
        try:
            if not active and not conn.poll(0.5):
                continue
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "add":
                    _, rid, ids, settings, guided = msg
                    try:
                        config = build_generation_config(ov_genai, settings, eos_id, guided)
                        tensor = ov.Tensor(np.array([ids], dtype=np.int64))
                        active[rid] = pipe.add_request(rid, tensor, config)
                    except Exception as exc:  # noqa: BLE001 - OpenVINO's own checks of the request
                        conn.send([(rid, [], None, ov_message(exc))])
                elif msg[0] == "cancel":
                    handle = active.pop(msg[1], None)
                    if handle is not None:
                        handle.cancel()
                        plog.info("cancelled request %d before its end (client gone or stop string); %d running",
                                  msg[1], len(active))
                elif msg[0] == "quit":
                    return
        except (EOFError, OSError):  # the worker is gone
            return
        if not active:
            continue
        batch = []
        try:
            pipe.step()
        except Exception as exc:  # noqa: BLE001 - fail the running requests, keep serving
            plog.exception("OpenVINO step failed")
            for rid, handle in active.items():
                handle.cancel()
                batch.append((rid, [], None, f"OpenVINO step failed: {ov_message(exc)}"))
            active.clear()
        for rid, handle in list(active.items()):
            while handle.can_read():
                for out in handle.read().values():
                    reason = out.finish_reason.name
                    batch.append((rid, list(out.generated_ids), None if reason == "NONE" else reason, None))
            status = handle.get_status().name
            if status != "RUNNING":
                del active[rid]
                if status == "IGNORED":
                    batch.append((rid, [], None, "the request does not fit the KV cache (raise engine.kv_cache_tokens)"))
                else:
                    batch.append((rid, [], "END", None))
        if batch:
            try:
                conn.send(batch)
            except (EOFError, OSError):
                return


class _PipelineProcess:
    """The worker's side of the pipeline process: sends requests and cancels, and a reader thread
    hands each request's outputs to its sink."""

    def __init__(self, ir_folder: str, sched_settings: dict, properties: dict, eos_id: int | None) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_pipeline_main, name="orchestr-openvino-pipeline", daemon=True,
                                args=(child, ir_folder, sched_settings, properties, eos_id))
        self.proc.start()
        child.close()
        try:
            kind, detail = self.conn.recv()
        except EOFError:
            kind, detail = "failed", f"the pipeline process exited (code {self.proc.exitcode})"
        if kind != "ready":
            self.proc.join(timeout=10)
            raise RuntimeError(f"cannot start OpenVINO's pipeline on {ir_folder}: {detail}")
        self.sinks: dict[int, Callable] = {}
        self.send_lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, name="orchestr-openvino-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                batch = self.conn.recv()
            except (EOFError, OSError):
                for sink in list(self.sinks.values()):
                    sink(([], None, "OpenVINO's pipeline process exited"))
                self.sinks.clear()
                return
            for rid, ids, reason, error in batch:
                sink = self.sinks.get(rid)
                if sink is None:
                    continue
                if reason == "END" or error is not None:
                    del self.sinks[rid]
                sink((ids, reason, error))

    def send(self, msg: tuple) -> None:
        with self.send_lock:
            self.conn.send(msg)

    def add(self, rid: int, ids: list[int], settings: dict, guided: dict | None, sink: Callable) -> None:
        self.sinks[rid] = sink
        self.send(("add", rid, ids, settings, guided))

    def cancel(self, rid: int) -> None:
        self.sinks.pop(rid, None)
        self.send(("cancel", rid))

    def close(self) -> None:
        try:
            self.send(("quit",))
        except (OSError, ValueError):
            pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


class OpenVinoEngine(PromptEndpoints):
    """One model in OpenVINO GenAI's continuous-batching pipeline, with the interface
    worker_base expects: ``generate_stream``, ``count_tokens``, ``model_details``, ``shutdown``."""

    backend = "openvino"

    def __init__(self, args: argparse.Namespace, ir_folder: str | Path, model_name: str | None = None) -> None:
        ov_genai = import_openvino_genai()
        from transformers import AutoTokenizer

        from orchestr.engine.templates import ChatFormatter

        self.ir_folder = str(ir_folder)
        self.model_name = model_name or Path(self.ir_folder).name
        self.properties = plugin_properties(args)
        self.tokenizer = AutoTokenizer.from_pretrained(self.ir_folder, trust_remote_code=args.trust_remote_code)
        self.formatter = ChatFormatter(self.tokenizer, getattr(args, "conv_template", None))
        self.context_len = int(args.max_model_len or _model_context(self.ir_folder))
        self.dtype_name = args.dtype if args.dtype in _PRECISIONS else "auto"
        self.device = "cpu"
        self.eos_ids = [t for t in _as_list(self.tokenizer.eos_token_id) if t is not None]
        self._ids = itertools.count(1)
        self._ov = ov_genai
        self.pipeline = _PipelineProcess(self.ir_folder, scheduler_settings(args), self.properties,
                                         self.eos_ids[0] if self.eos_ids else None)

    # ------------------------------------------------------------------ pipeline
    def generation_config(self, settings: dict[str, Any], guided_json: dict | None = None) -> Any:
        """Checked here (a bad parameter is the client's 400 before anything streams); the
        pipeline process builds its own copy from the same settings."""
        return build_generation_config(self._ov, settings, self.eos_ids[0] if self.eos_ids else None, guided_json)

    # ------------------------------------------------------------------ generation
    async def generate_stream(self, req: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Text deltas of one request; the last chunk carries ``finish_reason`` and usage.
        Closing the iterator early (client gone) cancels the request in the pipeline."""
        from orchestr.engine.detokenizer import IncrementalDetokenizer, StopStringMatcher

        try:
            refuse_unsupported(req, self.backend, SUPPORTED_FEATURES)
            refuse_resumed_grammar(req, self.backend)
            prompt = self.prompt_of(req)
            text, ids, stops, stop_ids = prompt.text, prompt.ids, list(prompt.stop), list(prompt.stop_token_ids)
            stop = [*req.stop, *(s for s in stops if s not in req.stop)]
            stop_token_ids = [*req.stop_token_ids, *(t for t in [*stop_ids, *self.eos_ids] if t not in req.stop_token_ids)]
            settings = generation_settings(req, len(ids), self.context_len, stop, stop_token_ids)
        except ValueError as exc:  # RequestError included
            yield refusal_chunk(exc)
            return
        try:
            self.generation_config(settings, req.guided_json)
        except Exception as exc:  # noqa: BLE001 - OpenVINO's validate() of the parameters
            yield GenerateChunk(error=ov_message(exc), error_code=ErrorCode.PARAM_OUT_OF_RANGE, finish_reason="error")
            return
        if req.echo:
            yield GenerateChunk(text=text)

        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        rid = next(self._ids)
        self.pipeline.add(rid, ids, settings, req.guided_json,
                          lambda item: loop.call_soon_threadsafe(inbox.put_nowait, item))
        detok = IncrementalDetokenizer(self.tokenizer)
        matcher = StopStringMatcher(stop)
        stop_set = set(stop_token_ids)
        output: list[int] = []
        produced, emitted, ended, sent = "", 0, False, 0
        try:
            while True:
                new_ids, reason, error = await inbox.get()
                # fell behind the pipeline: the steps queued meanwhile become one delta
                while error is None and reason is None and not inbox.empty():
                    more, reason, error = inbox.get_nowait()
                    new_ids = new_ids + more
                if error is not None:
                    ended = True
                    output += new_ids
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
                new_ids, sent = output[sent:], len(output)  # every chunk carries its tokens' ids
                if finish:
                    yield GenerateChunk(text=delta, finish_reason=finish, usage=_usage(ids, output), token_ids=new_ids)
                    return
                if delta or new_ids:
                    yield GenerateChunk(text=delta, token_ids=new_ids)
        finally:
            if not ended:  # client gone, stop string, or error: free the sequence's slot
                self.pipeline.cancel(rid)

    def shutdown(self) -> None:
        self.pipeline.close()


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
