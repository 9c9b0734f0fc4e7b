"""Chat completions against any OpenAI-compatible endpoint (the orchestr deployment, OpenAI, ...),
with retries and exponential backoff. Used by the answer step and by the judge."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any

import openai

from orchestr.eval.errors import EvalError

# Worth another try: the server is busy, restarting, or the network hiccupped.
_RETRYABLE = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError)


class EndpointUnreachable(EvalError):
    """Nothing answers at the endpoint (as opposed to: it answers, but not for this model)."""


class RequestFailed(Exception):
    """One request gave up after its retries (the caller counts it as failed and moves on)."""


def deployment_endpoint(cfg: Any) -> str:
    """The base URL of the OpenAI API server that `orchestr launch` starts from this same config."""
    api = cfg.services.api
    node = cfg.cluster.nodes.get(api.node) if api.node in cfg.cluster.nodes else None
    host = node.address if node is not None else "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{api.port}/v1"


def resolve_api_key(api_key_env: str | None, cfg: Any, use_deployment: bool) -> str:
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise EvalError(f"the endpoint needs an API key: set the environment variable {api_key_env}")
        return key
    if use_deployment and cfg.services.api.api_keys:
        return str(cfg.services.api.api_keys[0])  # the deployment's own key
    return os.environ.get("ORCHESTR_API_KEY", "EMPTY")


@dataclass
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        base = min(self.backoff_max_s, self.backoff_s * (2**attempt))
        return base * (0.5 + random.random() / 2)  # jitter so parallel workers do not retry in lockstep


class ChatClient:
    def __init__(self, base_url: str, api_key: str, model: str, timeout_s: float, retry: RetryPolicy):
        self.base_url = base_url
        self.model = model
        self.retry = retry
        # The SDK's own retries are off: ours log, back off with jitter and give up cleanly.
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)

    def check(self, setting: str, attempts: int = 3) -> None:
        """Fail fast, with the key to change, when the endpoint is down or does not serve the model."""
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                served = [m.id for m in self._client.models.list()]
                break
            except openai.AuthenticationError:
                raise EvalError(f"{self.base_url} rejected the API key") from None
            except openai.NotFoundError:
                return  # no /models route: let the first request tell
            except _RETRYABLE as e:
                last = e
                if attempt + 1 < attempts:
                    time.sleep(self.retry.delay(attempt))
        else:
            raise EndpointUnreachable(
                f"no OpenAI-compatible server answers at {self.base_url} ({type(last).__name__})\n"
                f"  start the deployment (`orchestr launch`) or set {setting}=http://host:port/v1"
            )
        if served and self.model not in served:
            raise EvalError(f"{self.base_url} does not serve model {self.model!r} (it serves: {', '.join(served)})")

    def chat(self, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
        for attempt in range(self.retry.max_retries + 1):
            try:
                resp = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens, n=1
                )
                return resp.choices[0].message.content or ""
            except openai.AuthenticationError:
                raise EvalError(f"{self.base_url} rejected the API key") from None
            except _RETRYABLE as e:
                if attempt == self.retry.max_retries:
                    raise RequestFailed(f"{type(e).__name__}: {e}") from None
                time.sleep(self.retry.delay(attempt))
            except openai.APIStatusError as e:  # 4xx: the request itself is wrong, retrying will not help
                raise RequestFailed(f"HTTP {e.status_code}: {e.message}") from None
        raise RequestFailed("unreachable")
