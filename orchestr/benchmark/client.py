"""One streaming request against a server, timed on the client side.

Two wire protocols: ``openai`` (``POST {base}/chat/completions`` with ``stream: true``, Server-Sent
Events) for any OpenAI-compatible server, and ``worker`` (``POST {base}/worker_generate_stream``,
newline-delimited :class:`~orchestr.protocol.GenerateChunk`) to measure an orchestr worker without
the API server and controller in front of it.

The client does as little as possible per chunk (the benchmark shares the CPU with the server
on small machines): it reads over orchestr's lean HTTP/1.1 client (``stream_client``; httpx
cost the benchmark ~4x the CPU per streamed event, taken from the server under test), keeps the
text and the timestamps, and tokens are counted after the run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from orchestr.protocol import ChatMessage, GenerateRequest
from orchestr.secrets import bearer, service_secret
from orchestr.services.stream_client import StreamBroken, StreamClient, StreamConnectError
from orchestr.services.worker_stream import decode_line

PROTOCOLS = ("openai", "worker")


@dataclass
class RequestRecord:
    index: int
    start: float
    end: float = 0.0
    first_token: float | None = None  # time the first non-empty text arrived
    text: str = ""
    ok: bool = False
    error: str | None = None
    output_tokens: int = 0  # filled in afterwards by re-tokenising `text`
    prompt_tokens: int | None = None  # the server's own count (usage), when it sent one

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class RequestSpec:
    protocol: str  # openai | worker
    base_url: str  # .../v1 for openai, the worker's address for worker
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float = 0.0
    api_key: str | None = None
    include_usage: bool = False  # openai: ask for the usage chunk at the end (stream_options)


def _openai_body(spec: RequestSpec) -> dict:
    body = {"model": spec.model, "messages": spec.messages, "max_tokens": spec.max_tokens,
            "temperature": spec.temperature, "stream": True}
    if spec.include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


def _worker_body(spec: RequestSpec) -> dict:
    req = GenerateRequest(model=spec.model, messages=[ChatMessage(**m) for m in spec.messages],
                          max_new_tokens=spec.max_tokens, temperature=spec.temperature)
    return req.model_dump(exclude_none=True)


async def stream_request(client: StreamClient, spec: RequestSpec, index: int) -> RequestRecord:
    """Send one request and read its stream to the end; never raises for server-side errors."""
    rec = RequestRecord(index=index, start=time.perf_counter())
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    base = spec.base_url.rstrip("/")
    if spec.protocol == "openai":
        url, body, parse = f"{base}/chat/completions", _openai_body(spec), _sse_line
    else:  # a worker wants the deployment's service secret (env ORCHESTR_SECRET / _FILE)
        url, body, parse = f"{base}/worker_generate_stream", _worker_body(spec), _ndjson_line
        headers = bearer(service_secret())
    parts: list[str] = []
    resp = None
    try:
        resp = await client.post(url, json.dumps(body).encode(), headers=headers)
        if resp.status != 200:
            detail = (await resp.read()).decode(errors="replace")[:300]
            rec.error = f"HTTP {resp.status}: {detail}"
            return rec
        pending = b""
        blocks = resp.iter_blocks()
        while True:
            block = await anext(blocks, None)
            if block is None:  # the end: a last line without its newline is a line too
                lines, pending = [pending], b""
            else:
                *lines, pending = (pending + block).split(b"\n")
            for line in lines:
                delta, err, prompt_tokens = parse(line.decode())
                if prompt_tokens is not None:
                    rec.prompt_tokens = prompt_tokens
                if err:
                    rec.error = err
                    return rec
                if delta:
                    if rec.first_token is None:
                        rec.first_token = time.perf_counter()
                    parts.append(delta)
            if block is None:
                break
        rec.ok = True
    except (StreamBroken, StreamConnectError, OSError, ValueError) as e:
        rec.error = f"{type(e).__name__}: {e}"
    finally:
        if resp is not None:
            await resp.aclose()
        rec.end = time.perf_counter()
        rec.text = "".join(parts)
    return rec


def _sse_line(line: str) -> tuple[str | None, str | None, int | None]:
    """One SSE line -> (new text, error, prompt tokens of a usage chunk)."""
    if not line.startswith("data:"):
        return None, None, None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None, None, None
    data = json.loads(payload)
    if "error" in data and "choices" not in data:
        err = data["error"]
        return None, str(err.get("message", err) if isinstance(err, dict) else err), None
    usage = data.get("usage")
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    choices = data.get("choices") or []
    if not choices:
        return None, None, prompt_tokens
    return (choices[0].get("delta") or {}).get("content"), None, prompt_tokens


def _ndjson_line(line: str) -> tuple[str | None, str | None, int | None]:
    """One worker stream line -> (new text, error, prompt tokens of its usage)."""
    chunk = decode_line(line)
    if chunk is None:
        return None, None, None
    prompt_tokens = chunk.usage.prompt_tokens if chunk.usage is not None and chunk.usage.prompt_tokens else None
    if chunk.error_code:
        return None, chunk.error or f"error code {chunk.error_code}", prompt_tokens
    return chunk.text, None, prompt_tokens


def _parse_sse(line: str) -> tuple[str | None, str | None]:
    return _sse_line(line)[:2]


def _parse_ndjson(line: str) -> tuple[str | None, str | None]:
    return _ndjson_line(line)[:2]
