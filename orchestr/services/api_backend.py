"""The OpenAI API server's backend: routing, the worker client and one serving object per route.

Overhead matters (the API + controller hop must stay within a few percent of calling the worker
directly), so worker calls go through one pooled lean HTTP/1.1 client (``worker_stream``), the
controller's worker table is cached (``routing``) and worker streams are relayed chunk by chunk,
never re-buffered (``sse``).
"""

from __future__ import annotations

from orchestr.services.generation import Generation
from orchestr.services.routing import Router
from orchestr.services.serving_chat import ChatServing
from orchestr.services.serving_completion import CompletionServing
from orchestr.services.serving_embedding import EmbeddingServing
from orchestr.services.serving_responses import ResponsesServing
from orchestr.services.serving_tokenizer import TokenizerServing
from orchestr.services.worker_stream import WorkerClient


class ApiBackend:
    def __init__(
        self,
        controller_address: str,
        *,
        worker_connect_timeout: float = 5.0,
        worker_timeout: float = 600.0,
        controller_timeout: float = 5.0,
        controller_cache_ttl: float = 2.0,
        worker_retries: int = 3,
        health_check_interval: float = 1.0,
        default_max_tokens: int = 1024,
        max_embedding_inputs: int = 256,
    ):
        self.router = Router(
            controller_address,
            cache_ttl=controller_cache_ttl,
            controller_timeout=controller_timeout,
            retries=worker_retries,
            health_check_interval=health_check_interval,
        )
        self.workers = WorkerClient(connect_timeout=worker_connect_timeout, read_timeout=worker_timeout)
        generation = Generation(self.router, self.workers)
        self.chat = ChatServing(generation, default_max_tokens)
        self.completions = CompletionServing(generation)
        self.embeddings = EmbeddingServing(self.router, self.workers, max_embedding_inputs)
        self.responses = ResponsesServing(self.chat)
        self.tokenizer = TokenizerServing(self.router, self.workers)

    async def aclose(self) -> None:
        await self.router.aclose()
        await self.workers.aclose()
