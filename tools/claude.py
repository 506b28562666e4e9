"""Claude calls for genms: which model, which request shape, what an error means, what a run cost.

Every Claude call of a run goes through one :class:`ClaudeSession` (the proposer, the planner's
reading of the request, Uni-MDM's symmetry predictor, the LLM-CIF baseline). The session

- picks the request shape from the installed ``langchain-anthropic`` model profile: JSON-schema
  output (``output_config.format``) where the model supports it, a forced tool call where the
  model accepts ``tool_choice``, an offered tool otherwise; no sampling parameters (current models
  reject non-default ``temperature``);
- sizes ``max_tokens`` to the answer asked for (plus room for thinking), checks ``stop_reason``
  (a cut-off answer is asked again once with twice the room; a refusal is not), and gives each
  purpose its own timeout;
- classifies errors: *fatal* ones (400, 401, 402, 403, 404: bad key, no access, retired or unknown
  model, a request shape the model rejects) end Claude use for the rest of the run, so the offline
  path goes on without calling again; *transient* ones (408, 409, 429, 5xx, 529, timeouts, lost
  connections) are retried at most :data:`RETRIES` times, waiting ``retry-after`` capped at
  :data:`MAX_WAIT_SECONDS` (``x-should-retry: false`` is obeyed);
- marks the stable prefix of each prompt for prompt caching and records tokens (input, output,
  cache reads and writes) and an estimated cost in US dollars.

The model comes from ``GENMS_CLAUDE_MODEL`` (default :data:`DEFAULT_MODEL`); a model the installed
SDK lists as deprecated is refused before any call.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "claude-sonnet-5-5"  # current Sonnet (2026-09-28); tests fail when the SDK deprecates it
TIMEOUTS = {"understand": 30.0, "propose": 60.0, "symmetry": 60.0, "llm_cif": 300.0, "chat": 120.0, "doctor": 20.0}
RETRIES = 2  # transient errors: retries after the first attempt
MAX_WAIT_SECONDS = 10.0  # cap on one wait between retries, whatever retry-after says
THINKING_ALLOWANCE = 4096  # output tokens left for thinking blocks (adaptive thinking is on by default on current models)
MAX_OUTPUT_TOKENS = 21000  # the SDK refuses non-streaming requests that could run past 10 minutes
# US dollars per million tokens (input, output), Anthropic's list prices; cache reads cost 0.1x
# input and 5-minute cache writes 1.25x. GENMS_CLAUDE_PRICE="input,output" prices any other model.
PRICES = {
    "claude-sonnet-5-5": (2.0, 10.0), "claude-sonnet-5": (2.0, 10.0), "claude-haiku-5-5": (0.10, 0.50),
    "claude-opus-5-5": (4.0, 20.0), "claude-opus-5": (5.0, 25.0), "claude-fable-5-1": (10.0, 50.0),
    "claude-sonnet-4-6": (3.0, 15.0), "claude-haiku-4-5": (1.0, 5.0),
}
FATAL_STATUS = {400, 401, 402, 403, 404, 422}
Schema = TypeVar("Schema", bound=BaseModel)


class ClaudeError(RuntimeError):
    """A Claude call that gave no usable answer; ``kind`` is 'fatal', 'transient' or 'answer'."""

    kind = "answer"

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ClaudeUnavailable(ClaudeError):
    """Claude cannot be used in this run (bad key, no access, retired model, rejected request shape)."""

    kind = "fatal"


class ClaudeBusy(ClaudeError):
    """Claude did not answer in time or was overloaded, after the retries."""

    kind = "transient"


class ClaudeAnswerError(ClaudeError):
    """Claude answered, but not with something usable (refusal, cut off, not the schema)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the installed SDK knows about a model: request shapes it accepts and its output limit."""

    name: str
    known: bool
    deprecated: str | None  # end-of-life date from the SDK, or None
    json_schema_output: bool
    forced_tool_choice: bool
    max_output_tokens: int


def configured_model() -> str:
    """The model genms calls (``GENMS_CLAUDE_MODEL``, else :data:`DEFAULT_MODEL`)."""
    return (os.environ.get("GENMS_CLAUDE_MODEL") or DEFAULT_MODEL).strip()


def claude_configured() -> bool:
    """Is an Anthropic API key present?"""
    return bool(os.environ.get("ANTHROPIC_API_KEY"))


def sdk_models() -> list[str]:
    """Model names the installed ``anthropic`` SDK lists."""
    from typing import get_args

    from anthropic.types.model_param import ModelParam

    return [name for arg in get_args(ModelParam) for name in get_args(arg)]


def deprecated_models() -> dict[str, str]:
    """{model: end-of-life date} from the installed SDK."""
    from anthropic._data.deprecated_models import DEPRECATED_MODELS

    return dict(DEPRECATED_MODELS)


@lru_cache(maxsize=32)
def model_info(name: str) -> ModelInfo:
    """The request shapes ``name`` accepts, from the installed ``langchain-anthropic`` profile.

    A model the profile does not know is treated as current: JSON-schema output, no forced tool.
    """
    from langchain_anthropic import ChatAnthropic

    profile = ChatAnthropic(model=name, api_key="-").profile or {}
    return ModelInfo(
        name=name, known=name in sdk_models() or bool(profile), deprecated=deprecated_models().get(name),
        json_schema_output=bool(profile.get("structured_output", not profile)),
        forced_tool_choice=bool(profile) and profile.get("tool_choice", True) is not False,
        max_output_tokens=int(profile.get("max_output_tokens") or 32000),
    )


def price(model: str) -> tuple[float, float] | None:
    """(input, output) US dollars per million tokens, or None when genms has no price for the model."""
    override = os.environ.get("GENMS_CLAUDE_PRICE", "").strip()
    if override:
        try:
            values = tuple(float(v) for v in override.split(","))
            if len(values) == 2 and all(v >= 0 for v in values):
                return values
        except ValueError:
            pass
        log.warning("GENMS_CLAUDE_PRICE must be 'input,output' in US dollars per million tokens, got %r", override[:40])
    return PRICES.get(model)


def timeout_for(purpose: str) -> float:
    """Request timeout (s) of one call for ``purpose``; ``GENMS_CLAUDE_TIMEOUT`` (0-3600 s) overrides them all."""
    default = TIMEOUTS.get(purpose, 60.0)
    value = os.environ.get("GENMS_CLAUDE_TIMEOUT")
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 3600:  # also NaN
        log.warning("GENMS_CLAUDE_TIMEOUT must be seconds in (0, 3600], got %r: using %g s", value[:40], default)
        return default
    return seconds


def chat_model(purpose: str = "chat", max_tokens: int = 4096, model: str | None = None):
    """A ``ChatAnthropic`` for ``purpose``: no sampling parameters, no SDK retries (the session retries)."""
    from langchain_anthropic import ChatAnthropic

    name = model or configured_model()
    return ChatAnthropic(model=name, timeout=timeout_for(purpose), max_retries=0,
                         max_tokens=min(max_tokens, model_info(name).max_output_tokens, MAX_OUTPUT_TOKENS))


def classify(exc: BaseException) -> ClaudeError:
    """An SDK error as :class:`ClaudeUnavailable`, :class:`ClaudeBusy` or :class:`ClaudeAnswerError`."""
    import anthropic

    if isinstance(exc, ClaudeError):
        return exc
    if isinstance(exc, anthropic.APITimeoutError):
        return ClaudeBusy("no answer within the timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return ClaudeBusy(f"could not reach the API ({_short(exc)})")
    if isinstance(exc, anthropic.APIStatusError):
        status, detail = exc.status_code, _api_message(exc)
        if status in FATAL_STATUS:
            return ClaudeUnavailable(f"{status} {detail}", status)
        if status in {408, 409, 429} or status >= 500:
            return ClaudeBusy(f"{status} {detail}", status)
        return ClaudeAnswerError(f"{status} {detail}", status)
    return ClaudeAnswerError(f"{type(exc).__name__}: {_short(exc)}")


def _short(exc: BaseException, limit: int = 200) -> str:
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def _api_message(exc) -> str:
    """'error_type: message' from an API error body."""
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {str(error.get('message', ''))[:200]}"
    return _short(exc)


def _retry_wait(exc: BaseException, attempt: int) -> float | None:
    """Seconds to wait before retrying ``exc`` (None: do not retry)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    if headers.get("x-should-retry") == "false":
        return None
    try:
        wait = float(headers.get("retry-after"))
    except (TypeError, ValueError):
        wait = 0.5 * 2 ** attempt
    return min(max(wait, 0.0), MAX_WAIT_SECONDS)


def invoke_with_retries(runnable, messages, on_retry=None):
    """``runnable.invoke(messages)``, retrying transient errors at most :data:`RETRIES` times.

    Waits ``retry-after`` (capped at :data:`MAX_WAIT_SECONDS`) or a short backoff; obeys
    ``x-should-retry``. Raises the classified :class:`ClaudeError`; ``on_retry(error)`` is told of each retry.
    """
    for attempt in range(RETRIES + 1):
        try:
            return runnable.invoke(messages)
        except Exception as exc:  # every SDK error is classified; nothing else is expected here
            error = classify(exc)
            wait = _retry_wait(exc, attempt) if isinstance(error, ClaudeBusy) else None
            if wait is None or attempt == RETRIES:
                raise error from exc
            if on_retry:
                on_retry(error)
            time.sleep(wait)
    raise AssertionError("unreachable")


@dataclass
class Usage:
    """Tokens of a run's Claude calls."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def add(self, message) -> None:
        """Add an ``AIMessage``'s usage (``usage_metadata.input_tokens`` includes cache reads and writes)."""
        usage = getattr(message, "usage_metadata", None) or {}
        details = usage.get("input_token_details") or {}
        read, written = int(details.get("cache_read") or 0), int(details.get("cache_creation") or 0)
        self.input_tokens += max(int(usage.get("input_tokens") or 0) - read - written, 0)
        self.output_tokens += int(usage.get("output_tokens") or 0)
        self.cache_read_input_tokens += read
        self.cache_creation_input_tokens += written

    def cost(self, model: str) -> float | None:
        """Estimated US dollars at list price (None when the model has no price here)."""
        rates = price(model)
        if rates is None:
            return None
        per_input, per_output = rates
        dollars = (self.input_tokens * per_input + self.output_tokens * per_output
                   + self.cache_read_input_tokens * 0.1 * per_input + self.cache_creation_input_tokens * 1.25 * per_input)
        return round(dollars / 1e6, 6)


@dataclass
class ClaudeSession:
    """Claude over one run: the model, every call's outcome, tokens and cost; off after a fatal error.

    ``calls`` lists ``{"purpose", "outcome", "seconds"}`` (outcome 'ok' or the error's kind and
    reason). ``disabled`` holds the reason once a fatal error ended Claude use for this run.
    """

    model: str = field(default_factory=configured_model)
    calls: list[dict] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    disabled: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        info = model_info(self.model)
        if info.deprecated:
            self.disabled = (f"model {self.model} is deprecated (end of life {info.deprecated}); "
                             f"set GENMS_CLAUDE_MODEL to a current model such as {DEFAULT_MODEL}")

    @property
    def active(self) -> bool:
        """Can Claude still be called in this run?"""
        return self.disabled is None

    def ask(self, schema: type[Schema], *, purpose: str, system: list[str], prompt: list[str], answer_tokens: int
            ) -> Schema:
        """Claude's answer to ``prompt`` as a ``schema`` instance (raises a :class:`ClaudeError`).

        ``system`` and ``prompt`` are lists of text blocks; the last block of ``system`` and the
        first of ``prompt`` end cache breakpoints, so put what stays the same across calls first.
        ``answer_tokens`` is the expected size of the answer; thinking room is added.
        """
        if self.disabled:
            raise ClaudeUnavailable(f"Claude is off for this run: {self.disabled}")
        max_tokens = answer_tokens + THINKING_ALLOWANCE
        for cut_off in range(2):  # a cut-off answer is asked again once with twice the room
            message = self._call(schema, purpose, system, prompt, max_tokens)
            stop = (message.response_metadata or {}).get("stop_reason")
            if stop == "refusal":
                raise self._failed(purpose, ClaudeAnswerError("Claude declined to answer (stop_reason refusal)"))
            if stop != "max_tokens":
                break
            if cut_off or max_tokens >= MAX_OUTPUT_TOKENS:
                raise self._failed(purpose, ClaudeAnswerError(f"the answer was cut off at max_tokens={max_tokens}"))
            max_tokens = min(2 * max_tokens, MAX_OUTPUT_TOKENS)
        try:
            answer = parse_answer(schema, message)
        except ClaudeAnswerError as exc:
            raise self._failed(purpose, exc) from None
        self._record(purpose, "ok", 0.0)
        return answer

    def _call(self, schema, purpose: str, system: list[str], prompt: list[str], max_tokens: int):
        """One request with transient retries; returns the ``AIMessage``."""
        from langchain_core.messages import HumanMessage, SystemMessage

        bound = bind_schema(chat_model(purpose, max_tokens, self.model), schema, model_info(self.model))
        messages = [SystemMessage(content=cached_blocks(system, -1)), HumanMessage(content=cached_blocks(prompt, 0))]
        started = time.monotonic()
        try:
            message = invoke_with_retries(bound, messages, lambda error: self._record(purpose, f"retry after {error}", 0.0))
        except ClaudeError as error:
            raise self._failed(purpose, error, time.monotonic() - started) from None
        with self._lock:
            self.usage.add(message)
        return message

    def _failed(self, purpose: str, error: ClaudeError, seconds: float = 0.0) -> ClaudeError:
        self._record(purpose, f"{error.kind}: {error}", seconds)
        if isinstance(error, ClaudeUnavailable) and self.disabled is None:
            self.disabled = str(error)
            log.warning("Claude is off for the rest of this run: %s", error)
        return error

    def _record(self, purpose: str, outcome: str, seconds: float) -> None:
        with self._lock:
            self.calls.append({"purpose": purpose, "outcome": outcome[:300], "seconds": round(seconds, 2)})

    def as_dict(self) -> dict:
        """The record kept in results.json and eval records."""
        with self._lock:
            answered = sum(c["outcome"] == "ok" for c in self.calls)
            return {"model": self.model, "calls": len(self.calls), "answered": answered, **vars(self.usage),
                    "cost_usd": self.usage.cost(self.model), "disabled": self.disabled,
                    "errors": [c for c in self.calls if c["outcome"] != "ok"][:20]}


def usage_summary(record: dict | None) -> str:
    """One line for reports: model, calls, tokens and estimated cost of a :meth:`ClaudeSession.as_dict` record."""
    if not record:
        return "Claude: not used"
    cost = "price unknown" if record.get("cost_usd") is None else f"about ${record['cost_usd']:.4f}"
    line = (f"Claude {record['model']}: {record['calls']} calls ({record['answered']} answered), "
            f"{record['input_tokens']:,} input + {record['cache_read_input_tokens']:,} cache-read + "
            f"{record['cache_creation_input_tokens']:,} cache-write + {record['output_tokens']:,} output tokens, {cost}")
    return line + (f"; off for this run: {record['disabled']}" if record.get("disabled") else "")


def total_usage(records: list[dict]) -> dict:
    """The sum of several :meth:`ClaudeSession.as_dict` records (an eval row's units); ``model`` joins the models."""
    counted = ("calls", "answered", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    total = {key: sum(int(r.get(key) or 0) for r in records) for key in counted}
    costs = [r.get("cost_usd") for r in records]
    total["cost_usd"] = None if any(c is None for c in costs) else round(sum(costs), 6)
    total["model"] = ", ".join(sorted({str(r.get("model")) for r in records}))
    total["disabled"] = next((r["disabled"] for r in records if r.get("disabled")), None)
    return total


_CURRENT: contextvars.ContextVar[ClaudeSession | None] = contextvars.ContextVar("genms_claude_session", default=None)


@contextmanager
def run_session(session: ClaudeSession | None):
    """Make ``session`` the run's session for code that has no planner at hand (Uni-MDM's symmetry source)."""
    token = _CURRENT.set(session)
    try:
        yield session
    finally:
        _CURRENT.reset(token)


def current_session() -> ClaudeSession | None:
    """The session of the run in progress (see :func:`run_session`), or None."""
    return _CURRENT.get()


def cached_blocks(texts: list[str], cache_index: int | None) -> list[dict]:
    """Text blocks; the block at ``cache_index`` (-1: the last; past the end: the last) ends a
    prompt-cache breakpoint. Empty texts are dropped (the API rejects empty text blocks)."""
    blocks = [{"type": "text", "text": text} for text in texts if text]
    if cache_index is not None and blocks:
        blocks[cache_index if -len(blocks) <= cache_index < len(blocks) else -1]["cache_control"] = {"type": "ephemeral"}
    return blocks


def bind_schema(model, schema: type[BaseModel], info: ModelInfo):
    """``model`` asked for ``schema``: JSON-schema output, else a (forced where accepted) tool call."""
    from anthropic import transform_schema

    if info.json_schema_output:
        return model.bind(output_config={"format": {"type": "json_schema", "schema": transform_schema(schema)}})
    return model.bind_tools([schema], tool_choice=schema.__name__ if info.forced_tool_choice else "auto")


def parse_answer(schema: type[Schema], message) -> Schema:
    """The ``schema`` instance in a reply: its tool call's input, else the JSON of its text blocks."""
    try:
        for call in getattr(message, "tool_calls", None) or []:
            if call.get("name") == schema.__name__:
                return schema.model_validate(call.get("args") or {})
        text = message.text if isinstance(message.text, str) else message.text()
        if not text.strip():
            raise ClaudeAnswerError("the reply held neither the tool call nor JSON text")
        return schema.model_validate(json.loads(_json_text(text)))
    except (ValidationError, ValueError) as exc:
        if isinstance(exc, ClaudeAnswerError):
            raise
        raise ClaudeAnswerError(f"the reply did not follow the schema ({_short(exc, 150)})") from None


def _json_text(text: str) -> str:
    """The JSON in a text reply; a surrounding ```json fence (tool-less fallbacks) is removed (linear)."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.partition("\n")[2].rsplit("```", 1)[0]
    return stripped
