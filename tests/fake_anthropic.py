"""A fake Anthropic Messages API on 127.0.0.1 that speaks the real wire format.

Tests point ``ANTHROPIC_BASE_URL`` at it and use the real ``anthropic`` / ``langchain-anthropic``
clients. A responder decides each reply from the request body; every request is recorded.

It holds requests to what the real API accepts, from the installed SDK's model list, deprecated
list and ``langchain-anthropic`` model profiles: unknown and retired models get 404
``not_found_error``; sampling parameters on models that reject them, forced ``tool_choice`` on
models that refuse it, JSON-schema output on models without it, ``max_tokens`` over the model's
limit, empty text blocks and more than four cache breakpoints get 400 ``invalid_request_error``.
Errors carry the real error types and headers (``request-id``, ``retry-after``,
``x-should-retry``). Replies may open with a thinking block, stop at ``max_tokens`` or with a
``refusal``. JSON-schema answers are cut to the schema, as constrained decoding would: an object
schema without properties yields ``{}``. Usage counts cache writes and reads of the prefix up to
the last ``cache_control`` block (at least ``min_cache_tokens`` long).

A reply that breaks the protocol (no tool call under a forced ``tool_choice``, text that is not
the schema's JSON under JSON-schema output) is recorded in ``violations``; the ``anthropic_env``
fixture fails the test on any.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               503: "api_error", 529: "overloaded_error"}
RETRYABLE = {408, 409, 429, 500, 502, 503, 504, 529}


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


def thinking(value: str = "Let me check the chemistry first.") -> dict:
    return {"type": "thinking", "thinking": value, "signature": "c2lnbmF0dXJl"}


def structured_schema(body: dict) -> tuple[str, dict] | None:
    """('json', schema) under JSON-schema output, ('tool', schema) when one tool is offered, else None."""
    output = (body.get("output_config") or {}).get("format")
    if output:
        return "json", output["schema"]
    tools = body.get("tools") or []
    if len(tools) == 1:
        return "tool", tools[0]["input_schema"]
    return None


def answer(body: dict, payload: dict, think: bool = True, stop_reason: str | None = None) -> dict:
    """``payload`` in the shape the request asked for: JSON text under JSON-schema output, else a
    call of the offered tool; opened by a thinking block (as current models do) when ``think``."""
    shape = structured_schema(body)
    content = [thinking()] if think else []
    if shape and shape[0] == "tool":
        content.append(tool_use(body["tools"][0]["name"], payload))
        return message(content, stop_reason or "tool_use", body.get("model", "claude-test"))
    content.append(text(json.dumps(payload)))
    return message(content, stop_reason or "end_turn", body.get("model", "claude-test"))


def refusal(body: dict) -> dict:
    """A refusal stop, as the API returns when a classifier stops the answer."""
    return message([text("I can't help with that.")], "refusal", body.get("model", "claude-test"))


def prompt_text(body: dict) -> str:
    """All text of a request's system prompt and messages, in order."""
    parts = []
    system = body.get("system")
    for block in ([{"text": system}] if isinstance(system, str) else system or []):
        parts.append(block.get("text", ""))
    for entry in body.get("messages", []):
        content = entry.get("content")
        for block in ([{"text": content}] if isinstance(content, str) else content or []):
            parts.append(block.get("text") or json.dumps(block.get("content", "")))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- model rules


def _installed_models() -> tuple[set[str], dict[str, str]]:
    from typing import get_args

    from anthropic._data.deprecated_models import DEPRECATED_MODELS
    from anthropic.types.model_param import ModelParam

    return {name for arg in get_args(ModelParam) for name in get_args(arg)}, dict(DEPRECATED_MODELS)


def _end_of_life(text_date: str) -> dt.date | None:
    """'November 30th, 2026' as a date."""
    try:
        return dt.datetime.strptime(re.sub(r"(\d+)(st|nd|rd|th)", r"\1", text_date), "%B %d, %Y").date()
    except ValueError:
        return None


def _profile(model: str) -> dict:
    from langchain_anthropic import ChatAnthropic

    return ChatAnthropic(model=model, api_key="-").profile or {}


def request_problem(body: dict, today: dt.date) -> tuple[int, str] | None:
    """(status, message) for a request the real API would reject, else None."""
    model = body.get("model")
    known, deprecated = _installed_models()
    if model not in known:
        return 404, f"model: {model}"
    end = _end_of_life(deprecated.get(model, ""))
    if end is not None and end <= today:
        return 404, f"model: {model} (retired on {end.isoformat()})"
    profile = _profile(model)
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return 400, "max_tokens: field required"
    if body["max_tokens"] > profile.get("max_output_tokens", 10**9):
        return 400, f"max_tokens: {body['max_tokens']} > {profile['max_output_tokens']}, the maximum for {model}"
    if profile.get("temperature") is False:
        for name in ("temperature", "top_p", "top_k"):
            if name in body and body[name] != 1.0:
                return 400, f"{name}: sampling parameters cannot be set for {model}"
    choice = (body.get("tool_choice") or {}).get("type")
    if choice in {"tool", "any"} and profile.get("tool_choice") is False:
        return 400, f"tool_choice: forced tool use is not supported by {model}; use output_config.format or tool_choice auto"
    if (body.get("output_config") or {}).get("format") and not profile.get("structured_output"):
        return 400, f"output_config.format: structured outputs are not supported by {model}"
    blocks = _blocks(body)
    if any(block.get("type") == "text" and not block.get("text") for block in blocks):
        return 400, "messages: text content blocks must be non-empty"
    if sum("cache_control" in block for block in blocks) > 4:
        return 400, "A maximum of 4 blocks with cache_control may be provided"
    return None


def _blocks(body: dict) -> list[dict]:
    system = body.get("system")
    blocks = list(system) if isinstance(system, list) else []
    for entry in body.get("messages", []):
        if isinstance(entry.get("content"), list):
            blocks += entry["content"]
    blocks += body.get("tools") or []
    return [b for b in blocks if isinstance(b, dict)]


def constrain(value, schema: dict, defs: dict):
    """``value`` as constrained decoding under ``schema`` could produce it (unknown keys dropped)."""
    if "$ref" in schema:
        schema = defs.get(schema["$ref"].rsplit("/", 1)[-1], {})
    if "anyOf" in schema:
        return value
    if schema.get("type") == "object" and isinstance(value, dict):
        properties = schema.get("properties", {})
        return {k: constrain(v, properties[k], defs) for k, v in value.items() if k in properties}
    if schema.get("type") == "array" and isinstance(value, list):
        return [constrain(v, schema.get("items", {}), defs) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- the server


class FakeAnthropic:
    """Start with ``with FakeAnthropic(responder) as fake:``; ``fake.url`` is the base URL.

    ``status`` answers every request with that error; ``errors`` is a list of statuses (or
    ``(status, headers)``) answered to the first requests, in order, before the responder's
    replies; ``retry_after`` is sent with retryable errors; ``today`` decides which models are retired.
    """

    def __init__(self, responder, delay: float = 0.0, status: int = 200, errors: list = (), retry_after: float = 0,
                 today: dt.date | None = None, min_cache_tokens: int = 1024):
        self.responder, self.delay, self.status = responder, delay, status
        self.errors, self.retry_after = list(errors), retry_after
        self.today = today or dt.date.today()
        self.min_cache_tokens = min_cache_tokens
        self.requests: list[dict] = []
        self.violations: list[str] = []
        self.cached: set[str] = set()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    scripted = fake.errors.pop(0) if fake.errors else None
                time.sleep(fake.delay)
                key = self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer ")
                if key != "test-key":
                    return self._error(401, "invalid x-api-key")
                if scripted is not None:
                    status, headers = scripted if isinstance(scripted, tuple) else (scripted, {})
                    return self._error(status, "scripted error", headers)
                if fake.status != 200:
                    return self._error(fake.status, "scripted error")
                problem = request_problem(body, fake.today)
                if problem:
                    return self._error(*problem)
                try:
                    reply = fake.responder(body)
                except Exception as exc:  # a test's assertion inside the responder: fail the test, not the client
                    fake.violations.append(f"the responder raised {type(exc).__name__}: {exc}")
                    return self._error(500, "the fake's responder raised")
                fake.check(body, reply)
                self._reply(200, fake.with_usage(body, reply))

            def _error(self, status: int, detail: str, headers: dict | None = None):
                kind = ERROR_TYPES.get(status, "api_error")
                extra = {"x-should-retry": "true" if status in RETRYABLE else "false"}
                if status in {429, 529}:
                    extra["retry-after"] = str(fake.retry_after)
                extra.update(headers or {})
                self._reply(status, {"type": "error", "error": {"type": kind, "message": detail},
                                     "request_id": "req_test"}, extra)

            def _reply(self, status, payload, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", "req_test")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def check(self, body: dict, reply: dict) -> None:
        """Record replies the real API could not give to this request; cut JSON answers to the schema."""
        if reply.get("stop_reason") in {"max_tokens", "refusal"}:
            return
        choice = body.get("tool_choice") or {}
        content = reply.get("content", [])
        if choice.get("type") == "tool" and not any(b.get("type") == "tool_use" and b.get("name") == choice.get("name")
                                                     for b in content):
            self.violations.append(f"no {choice.get('name')} tool call under a forced tool_choice")
        output = (body.get("output_config") or {}).get("format")
        if output:
            schema = output["schema"]
            for block in content:
                if block.get("type") == "text":
                    try:
                        value = json.loads(block["text"])
                    except ValueError:
                        self.violations.append("text that is not JSON under JSON-schema output")
                        continue
                    block["text"] = json.dumps(constrain(value, schema, schema.get("$defs", {})))

    def with_usage(self, body: dict, reply: dict) -> dict:
        """The reply with usage: about 4 characters a token, cache writes then reads of the cached prefix."""
        prefix, total = [], []
        system = body.get("system")
        sequence = ([{"type": "text", "text": system}] if isinstance(system, str) else list(system or []))
        for entry in body.get("messages", []):
            content = entry.get("content")
            sequence += [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        last = max((i for i, b in enumerate(sequence) if isinstance(b, dict) and "cache_control" in b), default=None)
        for i, block in enumerate(sequence):
            piece = json.dumps(block, sort_keys=True)
            total.append(piece)
            if last is not None and i <= last:
                prefix.append(json.dumps({k: v for k, v in block.items() if k != "cache_control"}, sort_keys=True))
        tokens = max(len("".join(total)) // 4, 1)
        cached = len("".join(prefix)) // 4
        read = written = 0
        if cached >= self.min_cache_tokens:
            digest = hashlib.sha256((body.get("model", "") + "".join(prefix)).encode()).hexdigest()
            with self._lock:
                if digest in self.cached:
                    read = cached
                else:
                    self.cached.add(digest)
                    written = cached
        output = max(len(json.dumps(reply.get("content", []))) // 4, 1)
        reply = dict(reply)
        reply["usage"] = {"input_tokens": tokens - read - written, "output_tokens": output,
                          "cache_read_input_tokens": read, "cache_creation_input_tokens": written}
        return reply

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
