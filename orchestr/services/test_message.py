"""`orchestr test-message`: one streamed round trip controller -> worker, to check a deployment.

Without ``--model-name`` it lists the controller's models and tries the first. Exits non-zero with a one-line reason when anything on the way fails.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import httpx

from orchestr.errors import OrchestrError
from orchestr.protocol import (
    ChatMessage,
    GenerateRequest,
    ModelListResponse,
    WorkerAddressResponse,
)
from orchestr.secrets import SecretError, bearer, service_secret
from orchestr.services.worker_stream import WorkerClient, WorkerFailed, WorkerUnreachable


class RoundTripError(OrchestrError):
    pass


def _post(url: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    try:
        r = httpx.post(url, json=body or {}, timeout=timeout, headers=bearer(service_secret()))
        r.raise_for_status()
        return r.json()
    except httpx.ConnectError as e:
        raise RoundTripError(f"cannot connect to {url}: {e}") from e
    except httpx.HTTPError as e:
        raise RoundTripError(f"request to {url} failed: {e}") from e


def list_models(controller: str) -> list[str]:
    _post(controller + "/refresh_all_workers", timeout=60.0)
    return ModelListResponse.model_validate(_post(controller + "/list_models")).models


def round_trip(controller: str, model: str, message: str, max_new_tokens: int, temperature: float) -> str:
    address = WorkerAddressResponse.model_validate(
        _post(controller + "/get_worker_address", {"model": model})
    ).address
    if not address:
        models = list_models(controller)
        raise RoundTripError(
            f"no worker serves model {model!r}; available: {', '.join(models) or '(none registered)'}"
        )
    print(f"worker: {address}", file=sys.stderr)
    req = GenerateRequest(
        model=model,
        messages=[ChatMessage(role="user", content=message)],
        temperature=temperature,
        max_new_tokens=max_new_tokens,
    )
    print(f"user: {message}")
    print("assistant: ", end="", flush=True)
    try:
        parts = asyncio.run(_stream(address, req))
    finally:
        print()
    reply = "".join(parts)
    if not reply.strip():
        raise RoundTripError("the worker answered with an empty reply")
    return reply


async def _stream(address: str, req: GenerateRequest) -> list[str]:
    """The reply's text deltas, printed as they arrive."""
    parts: list[str] = []
    workers = WorkerClient(connect_timeout=10.0, read_timeout=300.0)
    try:
        stream = await workers.open_stream(address, req)
        try:
            async for batch in stream.batches():
                for chunk in batch:
                    if chunk.error_code or chunk.error:
                        raise RoundTripError(f"worker error {chunk.error_code}: {chunk.error}")
                    print(chunk.text, end="", flush=True)
                    parts.append(chunk.text)
        finally:
            await stream.aclose()
    except (WorkerUnreachable, WorkerFailed) as e:
        raise RoundTripError(f"streaming from {address} failed: {e}") from e
    finally:
        await workers.aclose()
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestr test-message", description=__doc__.split("\n")[0])
    parser.add_argument("--controller-address", default="http://localhost:21001")
    parser.add_argument("--model-name", default=None)
    parser.add_argument("--message", default="Tell me a story with more than 1000 words.")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args(argv)
    controller = args.controller_address.rstrip("/")
    try:
        model = args.model_name
        if not model:
            models = list_models(controller)
            print(f"models: {', '.join(models) or '(none registered)'}")
            if not models:
                raise RoundTripError("no model is registered with the controller")
            model = models[0]
            if len(models) > 1:
                print(f"using {model} (pick another with --model-name)", file=sys.stderr)
        round_trip(controller, model, args.message, args.max_new_tokens, args.temperature)
    except RoundTripError as e:
        print(f"test-message failed: {e}", file=sys.stderr)
        return 1
    except SecretError as e:
        print(f"test-message: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
