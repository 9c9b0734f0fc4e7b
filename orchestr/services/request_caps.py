"""What one request may cost (services.api's max_sequences, max_prompt_tokens,
max_embedding_inputs, max_embedding_tokens): a request over a cap is refused with a 400 that
names the limit and its config key, before any worker starts on it.

Token counts are bounded from the bytes first (a byte-level tokenizer gives at most one token
per byte); only a request whose bound passes a cap is counted exactly, by a worker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from orchestr.config.serving import ApiServiceConfig
from orchestr.services.api_errors import ApiError

# upper bound of the tokens a chat template adds around the messages (as generation.py's)
TEMPLATE_TOKENS, PER_MESSAGE_TOKENS, PER_TEXT_TOKENS = 256, 16, 8

Counter = Callable[[str], Awaitable[int]]  # a text's exact token count


def too_costly(what: str, asked: int, limit: int, key: str, param: str) -> ApiError:
    return ApiError(400, f"This request asks for {asked} {what}; this server allows at most {limit} per request "
                         f"(limit services.api.{key}).", param=param, code="request_too_large")


class RequestCaps:
    def __init__(self, settings: ApiServiceConfig):
        self.s = settings

    def check_sequences(self, prompts: int, n: int, param: str) -> None:
        if prompts * n > self.s.max_sequences:
            what = f"sequences ({prompts} prompt(s) x n={n})" if prompts > 1 else f"sequences (n={n})"
            raise too_costly(what, prompts * n, self.s.max_sequences, "max_sequences", param)

    async def _tokens(self, items: Sequence[str | list[int]], count: Counter, limit: int, overhead: int = 0) -> int:
        """The inputs' tokens: exact for token ids; for texts a byte bound, counted exactly only
        when the bound reaches ``limit``."""
        ids = sum(len(x) for x in items if not isinstance(x, str))
        texts = [x for x in items if isinstance(x, str)]
        bound = ids + overhead + sum(len(t.encode()) + PER_TEXT_TOKENS for t in texts)
        if bound <= limit or not texts:
            return bound
        return ids + sum([await count(t) for t in texts])

    async def check_prompts(self, prompts: Sequence[str | list[int]], n: int, count: Counter) -> None:
        limit = self.s.max_prompt_tokens
        tokens = await self._tokens(prompts, count, limit // n)
        if tokens * n > limit:
            raise too_costly(f"prompt tokens ({tokens} x n={n})", tokens * n, limit, "max_prompt_tokens", "prompt")

    def check_chat(self, message_bytes: int, messages: int, n: int) -> int | None:
        """The prompt-token bound of a chat request, or None when it already fits the cap."""
        bound = message_bytes + TEMPLATE_TOKENS + PER_MESSAGE_TOKENS * messages
        return None if bound * n <= self.s.max_prompt_tokens else bound

    def refuse_chat(self, tokens: int, n: int) -> None:
        if tokens * n > self.s.max_prompt_tokens:
            raise too_costly(f"prompt tokens ({tokens} x n={n})", tokens * n, self.s.max_prompt_tokens,
                             "max_prompt_tokens", "messages")

    async def check_embeddings(self, inputs: Sequence[str | list[int]], count: Counter) -> None:
        if len(inputs) > self.s.max_embedding_inputs:
            raise too_costly("inputs", len(inputs), self.s.max_embedding_inputs, "max_embedding_inputs", "input")
        limit = self.s.max_embedding_tokens
        tokens = await self._tokens(inputs, count, limit)
        if tokens > limit:
            raise too_costly("input tokens", tokens, limit, "max_embedding_tokens", "input")
