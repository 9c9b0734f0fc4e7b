"""Worker chunks -> Server-Sent Events for the streaming OpenAI routes.

The per-token path is hot: text-only events are rendered from a pre-serialised head
(``FastSse``), the chunks one network read brought leave as one write (adjacent text merged
into one event), and several choices' streams are merged as their batches arrive.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from pydantic import BaseModel

from orchestr.protocol import ErrorCode, GenerateChunk, UsageInfo, coalesce_chunks
from orchestr.services.api_errors import ApiError, worker_error, worker_failed
from orchestr.services.generation import sum_usage
from orchestr.services.worker_stream import Batch, WorkerFailed, WorkerStream

logger = logging.getLogger("orchestr.api")

SSE_DONE = "data: [DONE]\n\n"


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def _json(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)


class FastSse:
    """Text-only stream events rendered from a pre-serialised head: the per-token hot path.

    Same JSON as the pydantic models produce for a chunk with one choice carrying only text.
    """

    def __init__(self, proto: BaseModel):
        head = proto.model_dump_json(exclude={"choices", "usage"})[:-1]  # drop the closing brace
        self.head = f'data: {head},"choices":[{{"index":'

    def chat(self, index: int, text: str) -> str:
        return f'{self.head}{index},"delta":{{"content":{_json(text)}}},"finish_reason":null}}]}}\n\n'

    def completion(self, index: int, text: str) -> str:
        return f'{self.head}{index},"text":{_json(text)},"logprobs":null,"finish_reason":null}}]}}\n\n'


async def sse_relay(
    streams: list[WorkerStream],
    render: Callable[[int, GenerateChunk], list[str]],
    proto: BaseModel,
    include_usage: bool,
    n: int,
) -> AsyncIterator[str]:
    """Worker chunks -> SSE text, shared by chat and text completions.

    ``render`` turns one chunk into that API's events; a worker error ends the stream with an
    error event; the usage event (summed over the choices, when asked for) and ``[DONE]`` close it.
    """
    usages: dict[int, UsageInfo] = {}
    async with aclosing(_relay(streams)) as batches:
        async for index, batch, error in batches:
            out: list[str] = []
            for c in coalesce_chunks(batch) if len(batch) > 1 else batch:
                if c.usage is not None:
                    usages[index] = c.usage
                out += render(index, c)
            if error is not None:
                out.append(sse(_json(error.body())))
            if out:
                yield "".join(out)
            if error is not None:
                break
    if include_usage:
        usage = sum_usage([usages.get(s.index) for s in streams], n)
        yield sse(proto.model_copy(update={"usage": usage}).model_dump_json())
    yield SSE_DONE


async def _relay(streams: list[WorkerStream]) -> AsyncIterator[tuple[int, Batch, ApiError | None]]:
    """Yield (choice index, batch, error) from all streams as batches arrive.

    An error ends its stream: it comes with the chunks that preceded it in the same read.
    One stream (the common case) is read directly; several are merged through a queue.
    """
    if len(streams) == 1:
        s = streams[0]
        try:
            async for batch, error in _checked(s):
                yield s.index, batch, error
        finally:
            await s.aclose()
        return

    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(s: WorkerStream) -> None:
        try:
            async for batch, error in _checked(s):
                await queue.put((s.index, batch, error))
        finally:
            await s.aclose()
            await queue.put((s.index, done, None))

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            index, batch, error = await queue.get()
            if batch is done:
                remaining -= 1
                continue
            yield index, batch, error
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _checked(s: WorkerStream) -> AsyncIterator[tuple[Batch, ApiError | None]]:
    """The stream's batches; a worker error or a broken stream ends it with an ApiError.

    A stream that ends without a finish reason gets a final ``stop`` chunk so clients always
    see how each choice ended.
    """
    finished = False
    try:
        async for batch in s.batches():
            for i, c in enumerate(batch):
                if c.error_code or c.finish_reason == "error":
                    logger.warning("worker error mid-stream: %s (%s)", c.error, c.error_code)
                    yield batch[:i], worker_error(c.error_code or ErrorCode.INTERNAL_ERROR, c.error)
                    return
                finished = finished or c.finish_reason is not None
            yield batch, None
    except WorkerFailed as e:
        logger.warning("worker stream broke: %s", e)
        yield [], worker_failed(e)
        return
    if not finished:
        yield [GenerateChunk(finish_reason="stop")], None
