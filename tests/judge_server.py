"""A deterministic OpenAI-compatible *test judge* on loopback that counts its requests.

It is the judge, not the thing under test: the answers it judges carry their quality as `Q<n>` and
it compares them. The first `Q<n>` in the user prompt is assistant A's (or the single answer), the
last one assistant B's. Verdicts follow the prompt's format: a 1-10 rating, `[[A]]`/`[[B]]`/`[[C]]`,
or arena-hard's five labels by the quality difference (>= 2 is a strong verdict). With `bias_a`,
equal answers go to assistant A (a position-biased judge). Usage: 1000 prompt, 100 completion tokens.
`stream: true` requests get the same text as Server-Sent Events. With `fast`, requests past the first
`fast` ones hang (before answering, mid-response, or by asking the client to retry later).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Q = re.compile(r"\bQ(\d+)\b")


def verdict(system: str, user: str, bias_a: bool) -> str:
    qs = [int(x) for x in Q.findall(user)]
    if not qs:
        return "I cannot tell."
    a, b = qs[0], qs[-1]
    if "A>>B" in system:
        d = a - b
        if d == 0 and bias_a:
            d = 1
        label = "A>>B" if d >= 2 else "A>B" if d == 1 else "A=B" if d == 0 else "B>A" if d == -1 else "B>>A"
        return f"Compared both. My final verdict is [[{label}]]"
    if "[[A]]" in system:
        letter = "A" if a > b or (a == b and bias_a) else "B" if b > a else "C"
        return f"Both considered. [[{letter}]]"
    return f"Rating: [[{min(10, max(1, 2 * a))}]]"


class JudgeServer:
    def __init__(self, model: str = "test-judge", bias_a: bool = False):
        self.model, self.bias_a = model, bias_a
        self.fast = None  # with a number: requests after the first `fast` ones hang for `slow_s`
        self.slow_s = 60.0
        # how the requests after `fast` hang: "before" answering, "mid"-response (headers and half the
        # body sent), or "retry": 503 with Retry-After `slow_s` (the client sleeps, then asks again)
        self.hang = "before"
        self.calls = 0
        self.structured = 0  # requests that asked for a JSON-schema verdict
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, body: dict, hang_mid: bool = False) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if hang_mid:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    time.sleep(outer.slow_s)
                self.wfile.write(data)

            def _stream(self, text: str, hang_mid: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                for i, word in enumerate(text.split(" ")):
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": outer.model,
                             "choices": [{"index": 0, "delta": {"content": (" " if i else "") + word}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    if hang_mid:
                        time.sleep(outer.slow_s)
                self.wfile.write(b"data: [DONE]\n\n")

            def do_GET(self) -> None:
                self._json({"object": "list", "data": [{"id": outer.model, "object": "model", "created": 0,
                                                        "owned_by": "test"}]})

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.calls += 1
                    n = outer.calls
                slow = outer.fast is not None and n > outer.fast
                if slow and outer.hang == "retry":
                    self.send_response(503)
                    self.send_header("Retry-After", str(int(outer.slow_s)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if slow and outer.hang == "before":
                    time.sleep(outer.slow_s)
                msgs = req["messages"]
                system = next((m["content"] for m in msgs if m["role"] == "system"), "")
                text = verdict(system, msgs[-1]["content"], outer.bias_a)
                fmt = req.get("response_format") or {}
                if fmt.get("type") == "json_schema":  # answer in the schema's one field, from the same verdict
                    outer.structured += 1
                    field, spec = next(iter(fmt["json_schema"]["schema"]["properties"].items()))
                    m = re.search(r"\[\[(.+?)\]\]", text)
                    value = {"C": "tie"}.get(m.group(1), m.group(1)) if m else None
                    value = int(value) if field == "rating" else value
                    assert value in spec["enum"], (value, spec)
                    text = json.dumps({field: value})
                if req.get("stream"):  # Server-Sent Events, one word per chunk (for `orchestr bench serve`)
                    self._stream(text, hang_mid=slow and outer.hang == "mid")
                    return
                self._json({"id": "c", "object": "chat.completion", "created": 0, "model": outer.model,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": text}}],
                            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}},
                           hang_mid=slow and outer.hang == "mid")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
