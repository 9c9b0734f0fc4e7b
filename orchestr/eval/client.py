"""Chat completions against any OpenAI-compatible endpoint (the orchestr deployment, OpenAI, ...).
Used by the answer step and by the judge.

Retries and backoff are the openai SDK's own (`max_retries`; exponential backoff with jitter that
honours Retry-After); each retry is logged by the SDK's logger, which `orchestr eval` shows.
Token usage of every answered request is added up per run (`Usage`) for cost accounting.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import openai

from orchestr.eval.errors import EvalError

_RETRYABLE = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError)
log = logging.getLogger(__name__)


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
class Usage:
    """Tokens of the answered requests of one run (thread-safe sums)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += prompt
            self.completion_tokens += completion


class ChatClient:
    def __init__(self, base_url: str, api_key: str, model: str, timeout_s: float, max_retries: int,
                 own_deployment: bool = False):  # fmt: skip
        self.base_url = base_url
        self.model = model
        self.own_deployment = own_deployment  # orchestr's own API server (structured outputs supported)
        self.usage = Usage()
        self._last = threading.local()  # this thread's last request's (prompt, completion) tokens
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries)

    def check(self, setting: str, attempts: int = 3) -> None:
        """Fail fast, with the key to change, when the endpoint is down or does not serve the model."""
        try:
            served = [m.id for m in self._client.with_options(max_retries=attempts - 1).models.list()]
        except openai.AuthenticationError:
            raise EvalError(f"{self.base_url} rejected the API key") from None
        except openai.NotFoundError:
            return  # no /models route: let the first request tell
        except _RETRYABLE as e:
            raise EndpointUnreachable(
                f"no OpenAI-compatible server answers at {self.base_url} ({type(e).__name__})\n"
                f"  start the deployment (`orchestr launch`) or set {setting}=http://host:port/v1"
            ) from None
        if served and self.model not in served:
            raise EvalError(f"{self.base_url} does not serve model {self.model!r} (it serves: {', '.join(served)})")

    def chat(self, messages: list[dict[str, str]], temperature: float, max_tokens: int,
             response_format: dict | None = None) -> str:  # fmt: skip
        extra: dict[str, Any] = {"response_format": response_format} if response_format else {}
        t0 = time.monotonic()
        try:
            resp = self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens, n=1, **extra
            )
        except openai.AuthenticationError:
            raise EvalError(f"{self.base_url} rejected the API key") from None
        except _RETRYABLE as e:  # the SDK has retried (and logged each retry) already
            raise RequestFailed(f"{type(e).__name__} after retries: {e}") from None
        except openai.APIStatusError as e:  # 4xx: the request itself is wrong, retrying will not help
            raise RequestFailed(f"HTTP {e.status_code}: {e.message}") from None
        u = resp.usage
        self._last.tokens = (u.prompt_tokens, u.completion_tokens) if u else (0, 0)
        self.usage.add(*self._last.tokens)
        log.debug("%s answered in %.1fs", self.model, time.monotonic() - t0)
        return resp.choices[0].message.content or ""

    def last_usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens of this thread's last answered request."""
        return getattr(self._last, "tokens", (0, 0))
