"""The batching engine: a thread that runs a transformers model over a paged KV cache with
continuous batching and prefix caching, and an asyncio-facing API for the workers.

Each step the scheduler (scheduler.py) picks the sequences and tokens of ONE forward: a token
for every decoding sequence, prefill chunks (short prompts whole and first), new requests
starting after their cached prefix. Finished or cancelled sequences leave at once, freeing
their KV blocks. With ``batching=False`` one request runs at a time (the baseline FastChat
behaves like).

A short request that arrives while a long prompt's chunk is in the middle of its forward does
not wait for the rest of it: the forward stops between two layers, a step serves the new
request (its prompt and first token), and the paused forward resumes where it stopped
(``_interrupt``). The two touch disjoint sequences and KV blocks, so nothing is recomputed.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from orchestr.config.serving import EngineConfig
from orchestr.engine import flat_forward
from orchestr.engine import paged_attention as pa
from orchestr.engine.cpu_linear import pack_linears
from orchestr.engine.fused_layers import fuse_layers
from orchestr.engine.loader import context_length, load_model, model_dtype_name
from orchestr.engine.metrics import EngineMetrics
from orchestr.engine.prompts import PromptEndpoints, RequestError, refusal_chunk
from orchestr.engine.prompts import encode as encode_text
from orchestr.engine.sampling import NON_FINITE, SamplingParams, SamplingRow, sample_with_logprobs
from orchestr.engine.scheduler import Plan, Scheduler
from orchestr.engine.sequence import Pooling, PreparedRequest, Sequence, token_logprobs
from orchestr.engine.templates import ChatFormatter
from orchestr.engine.threads import ThreadPolicy, leave_cores_to_engine
from orchestr.protocol import EmbeddingResult, ErrorCode, GenerateChunk, GenerateResult, coalesce_chunks

if TYPE_CHECKING:  # request types appear in signatures only
    from orchestr.protocol import EmbeddingRequest, GenerateRequest

log = logging.getLogger(__name__)


__all__ = ["Engine", "RequestError"]
MAX_TOP_LOGPROBS = 20


class Engine(PromptEndpoints):
    """Owns one model. Thread-safe entry points: ``generate_stream``/``generate``/``embed``
    (async), ``count_tokens``, ``model_details``, ``queue_length``."""

    backend = "hf"

    def __init__(self, model: Any, tokenizer: Any, config: EngineConfig | None = None, *,
                 conv_template: str | None = None, context_len: int | None = None,
                 model_name: str = "model", optimize: bool = True, threads: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.model_name = model_name
        self.formatter = ChatFormatter(tokenizer, conv_template)
        self.context_len = context_len or context_length(model, tokenizer)
        self.device = next(model.parameters()).device
        self.dtype_name = model_dtype_name(model)
        # CPU only, no-ops elsewhere: C kernels for attention/norm/rotary with q/k/v fused, and
        # bf16 linears packed for oneDNN. optimize=False keeps transformers' modules and the
        # torch attention path (the reference the tests compare with).
        self.native_attention = optimize
        self.flat_forward = None
        attention_span = _attention_span(model)  # before packing: it counts the parameters
        if optimize:
            fuse_layers(model)
            pack_linears(model)
            self.flat_forward = flat_forward.build(model)  # None: call the model itself
        self.batching = self.config.batching

        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_dtype = model.get_input_embeddings().weight.dtype
        if kv_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            kv_dtype = torch.float32
        layer_devices = {}
        for module in model.modules():
            idx = getattr(module, "layer_idx", None)
            if isinstance(idx, int) and idx not in layer_devices:
                param = next(module.parameters(), None)
                if param is not None:
                    layer_devices[idx] = param.device
        self.cache = pa.PagedKVCache(cfg.num_hidden_layers, kv_heads, head_dim, self.config.kv_cache_tokens,
                                     kv_dtype, device=self.device, layer_devices=layer_devices,
                                     prefix_caching=self.config.prefix_caching)
        self.blocks = self.cache.pool
        self.max_seq_tokens = min(self.context_len, self.cache.capacity_tokens)
        pa.register()
        try:
            model.set_attn_implementation(pa.ATTN_IMPLEMENTATION)
        except Exception as exc:  # e.g. remote code without transformers' attention interface
            raise ValueError(f"this model cannot run on orchestr's engine (custom attention unsupported): {exc}") \
                from exc
        self.base_model = getattr(model, model.base_model_prefix, model)

        self.eos_ids = self._eos_ids()
        self.vocab_size = int(getattr(cfg, "vocab_size", None) or len(tokenizer))
        self._grammars = None  # GrammarCompiler, made on the first constrained request
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._held: list[tuple[str, Any]] = []  # inbox items kept while a paused forward waits
        self._short_arrivals = 0  # short requests handed in since the last drain (other threads add)
        self.interrupts = 0  # forwards paused for a short request
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.threads = ThreadPolicy(pinned=threads)
        self._step_tokens = 0  # tokens in the forward of the current step
        self.metrics = EngineMetrics(model_name, self)
        self.sched = Scheduler(self.cache, self.config, self.metrics, attention_span=attention_span)
        self.max_batch = self.sched.max_batch
        self.token_budget = self.sched.token_budget

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model_path: str, config: EngineConfig | None = None, *, device: str = "auto",
                        dtype: str = "auto", load_8bit: bool = False, num_gpus: int = 1,
                        max_gpu_memory: str | None = None, cpu_offloading: bool = False,
                        tokenizer: str | None = None, trust_remote_code: bool = False,
                        conv_template: str | None = None, model_name: str = "model",
                        threads: int | None = None) -> Engine:
        model, tok = load_model(model_path, device=device, dtype=dtype, load_8bit=load_8bit, num_gpus=num_gpus,
                                max_gpu_memory=max_gpu_memory, cpu_offloading=cpu_offloading,
                                tokenizer=tokenizer, trust_remote_code=trust_remote_code)
        return cls(model, tok, config, conv_template=conv_template, model_name=model_name, threads=threads)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(e) for e in eos)
        return ids

    def start(self) -> Engine:
        if self._thread is None:
            leave_cores_to_engine()
            self._thread = threading.Thread(target=self._run, name="orchestr-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self) -> None:
        self._stopping = True
        self._inbox.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # ------------------------------------------------------------------ request preparation
    @property
    def queue_length(self) -> int:
        return self.sched.active

    @property
    def preemptions(self) -> int:
        return self.sched.preemptions

    def grammar_compiler(self):
        from orchestr.engine.grammar import GrammarCompiler

        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer, self.vocab_size, sorted(self.eos_ids))
        return self._grammars

    def prepare(self, req: GenerateRequest) -> PreparedRequest:
        if req.temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {req.temperature}")
        if not 0 < req.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {req.top_p}")
        if req.repetition_penalty <= 0:
            raise RequestError(f"repetition_penalty must be > 0, got {req.repetition_penalty}")
        if req.max_new_tokens is not None and req.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be >= 1, got {req.max_new_tokens}")
        if req.logprobs is not None and not 0 <= req.logprobs <= MAX_TOP_LOGPROBS:
            raise RequestError(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {req.logprobs}")
        bad = [t for t in (req.logit_bias or {}) if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"logit_bias has token ids outside the vocabulary [0, {self.vocab_size}): {bad[:3]}")
        prompt = self.prompt_of(req)
        room = self.max_seq_tokens - len(prompt.ids)
        if room < 1:
            raise RequestError(
                f"the prompt has {len(prompt.ids)} tokens; this model's context holds {self.max_seq_tokens} "
                "(prompt plus output)", ErrorCode.CONTEXT_OVERFLOW)
        max_new = room if req.max_new_tokens is None else min(req.max_new_tokens, room)
        params = SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                                repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
                                frequency_penalty=req.frequency_penalty, seed=req.seed,
                                logit_bias=req.logit_bias or None, logprobs=req.logprobs)
        grammar = None
        if req.guided_json is not None:
            grammar = self.grammar_compiler().constraint(req.guided_json)
            for token in req.resume_token_ids or ():  # a continuation: the grammar where the answer broke off
                grammar.accept(token)
        return PreparedRequest(request_id=req.request_id, prompt_text=prompt.text, prompt_ids=prompt.ids,
                               max_new_tokens=max_new, params=params, stop=[*req.stop, *prompt.stop],
                               stop_token_ids={*req.stop_token_ids, *prompt.stop_token_ids, *self.eos_ids},
                               echo=req.echo, grammar=grammar)

    # ------------------------------------------------------------------ async API
    async def generate_stream(self, req: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        """Text deltas of one request; the last chunk has ``finish_reason``. Closing the
        iterator early (client gone) cancels the request and frees its slot."""
        try:
            # compiling a grammar takes a while: off the caller's event loop
            prep = await asyncio.to_thread(self.prepare, req) if req.guided_json is not None else self.prepare(req)
            prompt_lps = None
            if req.echo and req.prompt_logprobs:
                prompt_lps = await self._call(self._prompt_logprobs, prep.prompt_ids, req.logprobs or 0)
        except RequestError as exc:
            yield refusal_chunk(exc)
            return
        except Exception as exc:  # tokenizer trouble etc.: an error chunk, not a broken stream
            log.exception("cannot prepare request %s", req.request_id)
            yield GenerateChunk(error=f"cannot prepare the request: {exc}", error_code=ErrorCode.INTERNAL_ERROR,
                                finish_reason="error")
            return
        if self._thread is None:
            self.start()
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[GenerateChunk] = asyncio.Queue()

        def sink(chunk: GenerateChunk) -> None:
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except RuntimeError:  # the caller's loop is gone
                pass

        seq = Sequence(prep, self.tokenizer, sink, self.max_seq_tokens, self.device)
        seq.metrics = self.metrics
        seq.report_cached = self.blocks.caching
        self.sched.submitted()
        if len(prep.prompt_ids) <= self.sched.short_prompt:
            self._short_arrivals += 1  # may pause a long forward (GIL-atomic enough: a hint)
        self._inbox.put(("add", seq))
        done = False
        sent_ids = 0  # output tokens whose ids went out with a chunk
        try:
            if prep.echo:
                yield GenerateChunk(text=prep.prompt_text, usage=seq.usage(), logprobs=prompt_lps)
            while True:
                ready = [await chunks.get()]
                while not chunks.empty():  # fell behind the engine: pass the queued tokens on together
                    ready.append(chunks.get_nowait())
                for chunk in coalesce_chunks(ready) if len(ready) > 1 else ready:
                    done = chunk.finish_reason is not None
                    if chunk.usage is not None:  # the ids up to the count this chunk was made at
                        upto = chunk.usage.completion_tokens
                        chunk.token_ids, sent_ids = seq.output_ids[sent_ids:upto], upto
                    yield chunk
                    if done:
                        return
        finally:
            if not done:
                self._inbox.put(("abort", seq.request_id))

    async def generate(self, req: GenerateRequest) -> GenerateResult:
        return GenerateResult.from_chunks([chunk async for chunk in self.generate_stream(req)])

    async def embed(self, req: EmbeddingRequest) -> EmbeddingResult:
        """Mean-pooled last hidden states, L2-normalised, one vector per input. The inputs run as
        prefill-only sequences inside the continuous batch, in chunks under the same step budget
        as generation (a long input cannot hold the worker), and stop within a step when the
        caller goes away (this coroutine cancelled)."""
        inputs = req.input_ids if req.input_ids is not None else req.input
        all_ids = []
        for i, item in enumerate(inputs):
            ids = encode_text(self.tokenizer, item, True) if isinstance(item, str) else list(item)
            if not ids or not all(0 <= t < self.vocab_size for t in ids):
                return EmbeddingResult(error=f"input[{i}]: token ids must be a non-empty list of ids in "
                                             f"[0, {self.vocab_size})", error_code=ErrorCode.VALIDATION_TYPE_ERROR)
            if len(ids) > self.context_len:
                return EmbeddingResult(error=f"input[{i}] has {len(ids)} tokens; this model's context holds "
                                             f"{self.context_len}", error_code=ErrorCode.CONTEXT_OVERFLOW)
            all_ids.append(ids)
        total = sum(len(ids) for ids in all_ids)
        if self.flat_forward is None:  # the module path has no per-row hidden states: whole inputs
            return EmbeddingResult(embedding=[await self._call(self._embed_ids, ids) for ids in all_ids],
                                   token_num=total)
        if self._thread is None:
            self.start()
        loop = asyncio.get_running_loop()
        seqs = [self._embedding_sequence(ids, loop) for ids in all_ids]
        for seq in seqs:
            self.sched.submitted()
            self._inbox.put(("add", seq))
        try:
            vectors = await asyncio.gather(*[seq.embedding.result for seq in seqs])
        except RequestError as exc:
            return EmbeddingResult(error=str(exc), error_code=exc.code)
        finally:
            for seq in seqs:  # (cancelling the gather cancels these futures too)
                fut = seq.embedding.result
                if not fut.done() or fut.cancelled():
                    self._inbox.put(("abort", seq.request_id))
        return EmbeddingResult(embedding=vectors, token_num=total)

    def _embedding_sequence(self, ids: list[int], loop: asyncio.AbstractEventLoop) -> Sequence:
        prep = PreparedRequest(request_id=f"emb-{uuid.uuid4().hex}", prompt_text="", prompt_ids=ids,
                               max_new_tokens=1, params=SamplingParams())
        result = loop.create_future()

        def sink(chunk: GenerateChunk) -> None:  # only a failure finishes it through the sink
            error = RequestError(chunk.error or "embedding failed", chunk.error_code or ErrorCode.INTERNAL_ERROR)
            settle_soon(loop, result, None, error)

        seq = Sequence(prep, self.tokenizer, sink, self.max_seq_tokens, self.device)
        seq.embedding = Pooling(loop, result)
        return seq

    async def _call(self, fn, *args):
        """Run ``fn`` on the engine thread between two steps (the model is not thread-safe)."""
        if self._thread is None:
            self.start()
        fut = asyncio.get_running_loop().create_future()
        self._inbox.put(("call", (fn, args, fut, asyncio.get_running_loop())))
        return await fut

    def _embed_ids(self, ids: list[int]) -> list[float]:
        pa.set_step(None, None)
        ids_t = torch.tensor([ids], device=self.device)
        hidden = self.base_model(input_ids=ids_t, use_cache=False).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden.float().mean(dim=0), dim=0).tolist()

    def _prompt_logprobs(self, ids: list[int], k: int) -> list:
        """Each prompt token's logprob given the tokens before it (one forward, no cache)."""
        pa.set_step(None, None)
        ids_t = torch.tensor([ids[: self.context_len]], device=self.device)
        logits = self.model(input_ids=ids_t, use_cache=False).logits[0].float().cpu()
        return token_logprobs(self.tokenizer, ids, logits, k)

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        torch.set_num_threads(self.threads.current)  # the count is per thread in torch's OpenMP
        # The thread policy is fed whole cycles (one step's start to the next's): the forward and
        # sampling, and also the per-token work between steps (stop strings, detokenizing, handing
        # chunks to the event loop), which contends with the HTTP side for the GIL and the cores.
        cycle: tuple[int, float] | None = None  # (tokens, start) of the step before
        with torch.inference_mode():
            while not self._stopping:
                idle = not self.sched.has_work()
                self._drain_inbox(block=idle)
                if idle:
                    cycle = None  # it waited for work: that time is not the step's
                if self._stopping:
                    break
                if not self.sched.has_work():
                    continue
                now = time.perf_counter()
                if cycle is not None:
                    self.threads.record(cycle[0], now - cycle[1])
                self._step_tokens = 0
                try:
                    self._step()
                except Exception as exc:  # a failed forward must not kill the worker
                    log.exception("engine step failed")
                    pa.set_step(None, None)
                    for seq in list(self.sched.running) + list(self.sched.waiting):
                        self._drop(seq, error=f"engine error: {exc}")
                cycle = (self._step_tokens, now) if self._step_tokens else None
        for seq in list(self.sched.running) + list(self.sched.waiting):
            self._drop(seq, error="engine stopped")

    def _drain_inbox(self, block: bool, adds_only: bool = False) -> None:
        """Take what other threads handed in. ``adds_only`` (a forward is paused): new requests
        only; aborts and calls are held until the paused forward is done (they could free
        blocks it writes, or run a forward of their own)."""
        self._short_arrivals = 0
        if not adds_only and self._held:
            held, self._held = self._held, []
            for kind, item in held:
                self._handle(kind, item)
        while True:
            try:
                kind, item = self._inbox.get(block=block, timeout=None)
            except queue.Empty:
                return
            block = False
            if adds_only and kind != "add":
                self._held.append((kind, item))
            elif self._handle(kind, item):
                return

    def _handle(self, kind: str, item: Any) -> bool:
        """One inbox item; True for "stop"."""
        if kind == "add":
            self.sched.waiting.append(item)
        elif kind == "abort":
            self._abort(item)
        elif kind == "call":
            fn, args, fut, loop = item
            try:
                result, error = fn(*args), None
            except Exception as exc:  # returned to the awaiting caller
                result, error = None, exc
            settle_soon(loop, fut, result, error)
        elif kind == "stop":
            return True
        return False

    def _abort(self, request_id: str) -> None:
        seq = self.sched.find(request_id)
        if seq is not None:
            seq.finished = True  # the client is gone: nothing more to send
            self._drop(seq)

    def _drop(self, seq: Sequence, error: str | None = None) -> None:
        if error is not None and (seq in self.sched.running or seq in self.sched.waiting):
            seq.finish("error", error=error, error_code=ErrorCode.INTERNAL_ERROR)
        self.sched.retire(seq)

    # ------------------------------------------------------------------ steps
    def _step(self) -> None:
        plan = self.sched.schedule()
        if not plan:
            return
        step = self._build(plan)
        # a long forward may pause for a short request that arrives meanwhile (see _interrupt)
        pausable = self.flat_forward is not None and self.batching and len(step.tokens) > self.sched.short_prompt
        self._forward(step, pausable)
        self._complete(step)

    def _build(self, plan: Plan) -> _Step:
        """The flattened tokens, positions and attention metadata of one forward."""
        # decodes first: the attention treats the first n_decode tokens as one batch
        plan.sort(key=lambda item: not (item[0].is_decoding and item[1] == 1))
        step = _Step(plan=plan, meta=pa.StepMeta(write_index=torch.empty(0, dtype=torch.long),
                                                 native=self.native_attention))
        meta = step.meta
        dec = [s for s, n in plan if n == 1 and s.is_decoding]
        if dec:
            lengths = torch.tensor([s.kv_len + 1 for s in dec])
            width = int(lengths.max())
            meta.n_decode = len(dec)
            meta.decode_index = torch.stack([s.table.slots[:width] for s in dec])
            meta.decode_lens = lengths.to(self.device)
        writes: list[torch.Tensor] = []
        for seq, n in plan:
            start = seq.kv_len
            offset = len(step.tokens)
            step.tokens.extend(seq.pending_tokens(n))
            step.positions.extend(range(start, start + n))
            writes.append(seq.table.slots[start : start + n])
            if offset >= meta.n_decode:
                meta.chunks.append(pa.ChunkMeta(offset=offset, n=n, start=start,
                                                kv_index=seq.table.slots[: start + n]))
            if seq.embedding is not None:  # its rows' hidden states are pooled, nothing sampled
                step.pooled.append((seq, offset, n))
            elif start + n == seq.num_tokens:  # its last pending token: sample the next one
                step.keep.append(offset + n - 1)
                step.sampled.append(seq)
        meta.write_index = torch.cat(writes) if len(writes) > 1 else writes[0]
        return step

    def _forward(self, step: _Step, pausable: bool) -> None:
        self._step_tokens = len(step.tokens)
        self.threads.pick(self._step_tokens)
        pa.set_step(self.cache, step.meta)
        input_ids = torch.tensor([step.tokens], device=self.device)
        position_ids = torch.tensor([step.positions], device=self.device)
        keep_rows = torch.tensor(step.keep, device=self.device) if step.keep else None
        if self.flat_forward is not None:
            state = self.flat_forward.start(input_ids, position_ids)
            pauses = 0

            def pause() -> bool:
                return pausable and pauses < MAX_PAUSES and self._short_arrivals > 0

            while not self.flat_forward.run_layers(state, pause):
                pauses += 1
                self.interrupts += 1
                self._interrupt(step)
                pa.set_step(self.cache, step.meta)
            step.logits = self.flat_forward.logits(state, keep_rows)
            for seq, offset, n in step.pooled:
                seq.embedding.add(self.flat_forward.final_hidden(state, offset, n))
        elif keep_rows is not None:
            step.logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                     logits_to_keep=keep_rows).logits[0]
        else:  # only mid-prompt chunks: no token to sample, skip the LM head
            self.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        pa.set_step(None, None)

    def _interrupt(self, paused: _Step) -> None:
        """A short request arrived while ``paused``'s forward was between two layers: run a
        step of the sequences it does not hold (the newcomers: their prompt, their first token)
        before resuming it."""
        pa.set_step(None, None)
        self._drain_inbox(block=False, adds_only=True)
        plan = self.sched.schedule(exclude={s for s, _ in paused.plan})
        if plan:
            sub = self._build(plan)
            self._forward(sub, pausable=False)
            self._complete(sub)
        self.threads.pick(len(paused.tokens))
        self._step_tokens = 0  # this cycle is two steps: the thread policy does not learn from it

    def _complete(self, step: _Step) -> None:
        """After the forward: advance the sequences, sample the next tokens, finish any done."""
        self.sched.after_forward(step.plan)
        for seq, _, _ in step.pooled:
            if seq.num_pending == 0:
                seq.finished = True
                settle_soon(seq.embedding.loop, seq.embedding.result, seq.embedding.vector(seq.num_tokens), None)
                self.sched.retire(seq)
        if not step.sampled:
            return
        rows = [SamplingRow(s.params, s.prompt_ids, s.output_ids, s.generator, s.grammar) for s in step.sampled]
        tokens, lps = sample_with_logprobs(step.logits, rows)
        for seq, token, lp in zip(step.sampled, tokens, lps, strict=True):
            if token == NON_FINITE:
                seq.finish("error", error="the sampling parameters turned this request's logits non-finite",
                           error_code=ErrorCode.PARAM_OUT_OF_RANGE)
            else:
                self.metrics.on_token(seq)
                seq.append_token(token, lp)
            if seq.finished:
                self.sched.retire(seq)


def _attention_span(model: Any) -> float | None:
    """The history length past which a prefill token's attention costs more than its
    projections and MLP: parameters per layer (2 FLOPs each) over the attention's 4 * heads *
    head_dim FLOPs per earlier token, divided by how much slower the attention kernels run per
    FLOP than the large products (about 2.5x, measured on AVX-512 CPUs; see docs/benchmarks.md)."""
    known = getattr(model, "_orchestr_attention_span", None)
    if known is not None:  # a second engine over the same (already packed) model
        return known
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    try:
        layers = cfg.num_hidden_layers
        embeddings = model.get_input_embeddings().weight.numel()
        per_layer = (sum(p.numel() for p in model.parameters()) - embeddings) / max(1, layers)
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        span = 2.0 * per_layer / (4.0 * heads * head_dim) / ATTENTION_SLOWDOWN
    except (AttributeError, TypeError, ZeroDivisionError):
        return None
    if span <= 0:  # parameters not countable (packed elsewhere): tokens only
        return None
    model._orchestr_attention_span = span
    return span


ATTENTION_SLOWDOWN = 2.5
MAX_PAUSES = 4  # per forward: a stream of short arrivals cannot hold a long prompt back for long


@dataclass
class _Step:
    """One forward's inputs and, after it, its logits."""

    plan: Plan
    meta: pa.StepMeta
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    keep: list[int] = field(default_factory=list)  # rows whose logits are sampled
    sampled: list[Sequence] = field(default_factory=list)
    pooled: list[tuple[Sequence, int, int]] = field(default_factory=list)  # embedding rows (offset, n)
    logits: torch.Tensor | None = None


def settle_soon(loop: asyncio.AbstractEventLoop, fut: asyncio.Future, result: Any,
                error: BaseException | None) -> None:
    """From the engine thread: settle ``fut`` on its loop; nothing if that loop is gone (the
    caller gave up: raising here would fail the whole step)."""
    try:
        loop.call_soon_threadsafe(_settle, fut, result, error)
    except RuntimeError:
        pass


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
