"""A fake Anthropic Messages API on 127.0.0.1 that speaks the real wire format.

Tests point ``ANTHROPIC_BASE_URL`` at it and use the real ``anthropic`` / ``langchain-anthropic``
clients. A responder decides each reply from the request body; every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def message(content: list[dict], stop_reason: str = "end_turn", model: str = "claude-test") -> dict:
    """A Messages API response body."""
    return {
        "id": f"msg_{int(time.time() * 1e6)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 34},
    }


def tool_use(name: str, arguments: dict, call_id: str = "toolu_01") -> dict:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


class FakeAnthropic:
    """Start with ``with FakeAnthropic(responder) as fake:``; ``fake.url`` is the base URL."""

    def __init__(self, responder, delay: float = 0.0, status: int = 200):
        self.responder, self.delay, self.status = responder, delay, status
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                time.sleep(fake.delay)
                if "test-key" not in (self.headers.get("x-api-key"), self.headers.get("authorization", "").removeprefix("Bearer ")):
                    self._reply(401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
                elif fake.status != 200:
                    self._reply(fake.status, {"type": "error", "error": {"type": "api_error", "message": "overloaded"}})
                else:
                    self._reply(200, fake.responder(body))

            def _reply(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", "req_test")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
