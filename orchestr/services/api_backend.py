"""The OpenAI API server's backend: routing, the worker client and one serving object per route.

Overhead matters (the API + controller hop must stay within a few percent of calling the worker
directly), so worker calls go through one pooled lean HTTP/1.1 client (``worker_stream``), the
controller's worker table is cached (``routing``) and worker streams are relayed chunk by chunk,
never re-buffered (``sse``).
"""

from __future__ import annotations

from orchestr.config.serving import ApiServiceConfig
from orchestr.services.generation import Generation
from orchestr.services.request_caps import RequestCaps
from orchestr.services.routing import Router
from orchestr.services.serving_chat import ChatServing
from orchestr.services.serving_completion import CompletionServing
from orchestr.services.serving_embedding import EmbeddingServing
from orchestr.services.serving_responses import ResponsesServing
from orchestr.services.serving_tokenizer import TokenizerServing
from orchestr.services.worker_stream import WorkerClient


class ApiBackend:
    def __init__(self, controller_address: str, settings: ApiServiceConfig | None = None):
        s = settings or ApiServiceConfig()  # services.api: its timeouts, retries and limits
        self.router = Router(
            controller_address,
            cache_ttl=s.controller_cache_ttl_s,
            controller_timeout=s.controller_timeout_s,
            retries=s.worker_retries,
            health_check_interval=s.health_check_interval_s,
        )
        self.workers = WorkerClient(connect_timeout=s.worker_connect_timeout_s, read_timeout=s.worker_timeout_s)
        generation = Generation(self.router, self.workers)
        caps = RequestCaps(s)  # what one request may cost
        self.chat = ChatServing(generation, s.default_max_tokens, caps)
        self.completions = CompletionServing(generation, caps)
        self.embeddings = EmbeddingServing(generation, caps)
        self.responses = ResponsesServing(self.chat)
        self.tokenizer = TokenizerServing(self.router, self.workers)

    async def aclose(self) -> None:
        await self.router.aclose()
        await self.workers.aclose()
