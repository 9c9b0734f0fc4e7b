"""Worker streams that survive their worker: a routed stream that, when its worker dies after it
has sent tokens, goes on on another worker of the model from the prompt plus the tokens already
generated (the chunks carry their ids), so its reader sees one uninterrupted answer.

Used by every reader of generate streams behind the router: the API's routes (streaming or not)
and the web UI. What the continuation keeps and what it cannot (docs/faults.md):

* the text of a greedy answer is the text without the fault; sampled answers continue with the
  seed advanced by the tokens already drawn (``GenerateRequest.continuation_of``);
* usage counts the original prompt once and every generated token (the worker of a continuation
  counts the resumed tokens as prompt: they are moved back here);
* logprobs, ``n > 1`` (each choice is its own stream) and tools continue as they are; structured
  outputs continue on the transformers worker, whose grammar is advanced over the resumed
  tokens (vLLM and OpenVINO workers refuse such a continuation, which then fails plainly);
* text a worker held back when it died (the start of a possible stop string, half a UTF-8
  character) is not recovered: the continuation starts its text at its own tokens.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from orchestr.protocol import GenerateRequest, UsageInfo
from orchestr.services.api_errors import ApiError
from orchestr.services.routing import Router
from orchestr.services.worker_stream import Batch, WorkerClient, WorkerFailed, WorkerStream

logger = logging.getLogger("orchestr.api")

MAX_CONTINUATIONS = 3  # workers one answer may pass through after its first one died

Check = Callable[[str, WorkerStream], Awaitable[None]]


class ContinuingStream(WorkerStream):
    """A routed worker stream; a worker that breaks off mid-answer is replaced by a continuation."""

    def __init__(self, router: Router, workers: WorkerClient, req: GenerateRequest, addr: str,
                 inner: WorkerStream):
        super().__init__(inner.first, _no_rest(), inner.index)
        self.router, self.workers, self.req = router, workers, req
        self.addr, self.inner = addr, inner
        self.generated: list[int] = []  # ids of every token this answer has so far
        self.resumed = 0  # tokens the current worker was given as resumed (its prompt counts them)
        self.continuations = 0
        self.finished = False

    async def batches(self) -> AsyncIterator[Batch]:
        while True:
            try:
                async for batch in self.inner.batches():
                    self._note(batch)
                    yield batch
                return
            except WorkerFailed as e:
                if self.finished:
                    return  # the answer was complete; only the connection's end broke
                if self.continuations >= MAX_CONTINUATIONS:
                    raise self._gone() from e
                logger.warning("worker %s broke off after %d tokens of %s (%s); continuing elsewhere",
                               self.addr, len(self.generated), self.req.model, e)
                await self._continue()

    def _note(self, batch: Batch) -> None:
        for c in batch:
            if c.token_ids:
                self.generated.extend(c.token_ids)
            if c.usage is not None and self.resumed:
                u = c.usage
                c.usage = UsageInfo(prompt_tokens=u.prompt_tokens - self.resumed,
                                    completion_tokens=u.completion_tokens + self.resumed,
                                    total_tokens=u.total_tokens)
            if c.finish_reason is not None:
                self.finished = True

    async def _continue(self) -> None:
        self.router.take_out(self.addr)
        old, self.continuations = self.inner, self.continuations + 1
        await old.aclose()  # releases its worker's load
        cont = self.req.continuation_of(self.generated)

        async def call(addr: str) -> WorkerStream:
            s = await self.workers.open_stream(addr, cont, self.index)
            s.on_close = lambda: self.router.release(addr)
            self.addr = addr
            return s

        try:
            self.inner = await self.router.run(self.req.model, call, hold=True)
        except ApiError as e:
            logger.warning("no worker could continue %s: %s", self.req.model, e.message)
            raise self._gone() from e
        self.resumed = len(self.generated)

    def _gone(self) -> WorkerFailed:
        return WorkerFailed(f"The worker serving `{self.req.model}` stopped in the middle of the answer and no "
                            "other worker of the model could continue it; please try again.", status=503)

    async def aclose(self) -> None:
        on_close, self.on_close = self.on_close, None
        try:
            await self.inner.aclose()
        finally:
            if on_close is not None:
                on_close()


async def _no_rest() -> AsyncIterator[Batch]:
    return
    yield  # an async generator with nothing in it: the inner stream has the rest


async def open_continuing(router: Router, workers: WorkerClient, req: GenerateRequest, index: int = 0,
                          check: Check | None = None, before: Callable[[str], Awaitable[None]] | None = None
                          ) -> ContinuingStream:
    """A stream whose first batch arrived, on a routed worker (failures before it are retried on
    another one); ``before(addr)`` runs first (e.g. the API's length check), ``check(addr,
    stream)`` may refuse the first batch (closing the stream). The worker's load lasts until the
    stream is closed."""

    async def call(addr: str) -> ContinuingStream:
        if before is not None:
            await before(addr)
        inner = await workers.open_stream(addr, req, index)
        if check is not None:
            try:
                await check(addr, inner)
            except BaseException:
                await inner.aclose()
                raise
        inner.on_close = lambda: router.release(addr)
        return ContinuingStream(router, workers, req, addr, inner)

    return await router.run(req.model, call, hold=True)
