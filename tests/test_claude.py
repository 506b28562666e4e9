"""The Claude client (tools.claude) through the fake Messages API (tests/fake_anthropic.py), never the internet.

Covers the request shape per model, prompt caching and cost, transient and fatal errors, stop
reasons, thinking blocks, the fake's own model rules, model_info, timeout_for and usage_summary.
Waits between retries are recorded (``time.sleep`` monkeypatched), never slept.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import anthropic
import pytest
from pydantic import BaseModel

import tools.claude as claude
from fake_anthropic import answer, message, refusal, text
from tools.claude import (ClaudeAnswerError, ClaudeBusy, ClaudeSession, ClaudeUnavailable, classify, model_info,
                          timeout_for, usage_summary)

HAIKU, OLD = "claude-haiku-5-5", "claude-sonnet-4-5"
PAYLOAD = {"formula": "MgO", "letters": ["a", "b"]}
SYSTEM = ["You propose crystals. " * 300]  # ~6600 characters: past the fake's 1024-token cache minimum


class Pick(BaseModel):
    formula: str
    letters: list[str]


def replies(*items):
    """A responder giving ``items[i]`` to request i (the last one repeats): a payload dict or a reply-maker."""
    state = {"i": 0}

    def respond(body):
        item = items[min(state["i"], len(items) - 1)]
        state["i"] += 1
        return item(body) if callable(item) else answer(body, item)

    return respond


def ask(session: ClaudeSession, second: str = "Answer in JSON.") -> Pick:
    return session.ask(Pick, purpose="propose", system=SYSTEM, prompt=["Propose MgO.", second], answer_tokens=100)


@pytest.fixture
def waits(monkeypatch):
    """The retry waits of tools.claude, recorded instead of slept (other modules keep the real time.sleep)."""
    recorded: list[float] = []
    monkeypatch.setattr(claude, "time", SimpleNamespace(sleep=recorded.append, monotonic=time.monotonic))
    monkeypatch.setattr(claude, "MAX_WAIT_SECONDS", 0.05)
    return recorded


# ---------------------------------------------------------------------------------------------- request shape


def test_default_model_asks_for_json_schema_output(anthropic_env):
    server = anthropic_env(replies(PAYLOAD))
    assert ask(ClaudeSession()) == Pick(**PAYLOAD)
    (request,) = server.requests
    body = request["body"]
    assert body["model"] == claude.DEFAULT_MODEL == "claude-sonnet-5-5"
    assert body["output_config"]["format"]["type"] == "json_schema"
    assert set(body["output_config"]["format"]["schema"]["properties"]) == {"formula", "letters"}
    assert not {"tools", "tool_choice", "temperature", "top_p", "top_k"} & set(body)
    assert body["max_tokens"] == 100 + claude.THINKING_ALLOWANCE
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    first, second = body["messages"][0]["content"]
    assert first["cache_control"] == {"type": "ephemeral"} and "cache_control" not in second
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == "Bearer test-key" and headers["x-stainless-read-timeout"] == "5.0"


def test_haiku_gets_a_forced_tool_call(anthropic_env, monkeypatch):
    server = anthropic_env(replies(PAYLOAD))
    monkeypatch.setenv("GENMS_CLAUDE_MODEL", HAIKU)
    assert ask(ClaudeSession()) == Pick(**PAYLOAD)
    body = server.requests[0]["body"]
    assert body["model"] == HAIKU and "output_config" not in body
    assert [tool["name"] for tool in body["tools"]] == ["Pick"]
    assert body["tool_choice"] == {"type": "tool", "name": "Pick"}
    assert body["max_tokens"] == 100 + claude.THINKING_ALLOWANCE


@pytest.mark.parametrize("model", [None, HAIKU])
@pytest.mark.parametrize("think", [True, False])
def test_thinking_blocks_do_not_disturb_the_answer(anthropic_env, monkeypatch, model, think):
    replies_seen = []

    def respond(body):
        replies_seen.append(answer(body, PAYLOAD, think=think))
        return replies_seen[-1]

    anthropic_env(respond)
    if model:
        monkeypatch.setenv("GENMS_CLAUDE_MODEL", model)
    assert ask(ClaudeSession()) == Pick(**PAYLOAD)
    assert (replies_seen[0]["content"][0]["type"] == "thinking") is think


def test_cache_breakpoint_on_the_last_of_several_system_blocks(anthropic_env):
    server = anthropic_env(replies(PAYLOAD))
    ClaudeSession().ask(Pick, purpose="propose", system=["Rules.", "Family.", "Known formulae."],
                        prompt=["Propose MgO."], answer_tokens=100)
    assert [("cache_control" in block) for block in server.requests[0]["body"]["system"]] == [False, False, True]


# ---------------------------------------------------------------------------------------------- caching and cost


def test_prompt_cache_write_then_read_and_cost(anthropic_env):
    anthropic_env(replies(PAYLOAD))
    session = ClaudeSession()
    ask(session, "First question.")
    written = session.usage.cache_creation_input_tokens
    assert written > 1000 and session.usage.cache_read_input_tokens == 0
    ask(session, "Second, different question.")
    record = session.as_dict()
    assert record["cache_read_input_tokens"] == written and record["cache_creation_input_tokens"] == written
    assert record["calls"] == record["answered"] == 2 and record["errors"] == [] and record["disabled"] is None
    assert 0 < record["input_tokens"] < 100 and record["output_tokens"] > 0
    expected = (record["input_tokens"] * 2 + record["output_tokens"] * 10 + record["cache_read_input_tokens"] * 0.2
                + record["cache_creation_input_tokens"] * 2.5) / 1e6
    assert record["cost_usd"] == pytest.approx(expected, abs=1e-6) and record["cost_usd"] > 0


def test_price_override_and_unpriced_model(monkeypatch):
    usage = claude.Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert usage.cost("claude-sonnet-5-5") == 12.0
    assert usage.cost(HAIKU) == pytest.approx(0.6)
    assert usage.cost("claude-unpriced-1") is None
    monkeypatch.setenv("GENMS_CLAUDE_PRICE", "1,2")
    assert usage.cost("claude-unpriced-1") == 3.0 and usage.cost("claude-sonnet-5-5") == 3.0
    monkeypatch.setenv("GENMS_CLAUDE_PRICE", "oops")
    assert usage.cost("claude-sonnet-5-5") == 12.0


# ---------------------------------------------------------------------------------------------- transient errors


def test_overloaded_twice_then_answered(anthropic_env, waits):
    server = anthropic_env(replies(PAYLOAD), errors=[529, 529], retry_after=0)
    session = ClaudeSession()
    assert ask(session) == Pick(**PAYLOAD)
    assert len(server.requests) == 3 and waits == [0.0, 0.0]
    outcomes = [call["outcome"] for call in session.as_dict()["errors"]]
    assert outcomes == ["retry after 529 overloaded_error: scripted error"] * 2
    assert session.as_dict()["answered"] == 1 and session.active


def test_rate_limited_always_gives_busy_after_the_retries(anthropic_env, waits):
    server = anthropic_env(replies(PAYLOAD), status=429, retry_after=0)
    session = ClaudeSession()
    with pytest.raises(ClaudeBusy) as caught:
        ask(session)
    assert caught.value.kind == "transient" and caught.value.status == 429
    assert len(server.requests) == 1 + claude.RETRIES == 3 and waits == [0.0, 0.0]
    assert session.active  # a transient error does not end Claude use
    assert session.as_dict()["errors"][-1]["outcome"].startswith("transient: 429 rate_limit_error")


def test_should_retry_false_is_obeyed(anthropic_env, waits):
    server = anthropic_env(replies(PAYLOAD), errors=[(503, {"x-should-retry": "false"})])
    with pytest.raises(ClaudeBusy):
        ask(ClaudeSession())
    assert len(server.requests) == 1 and waits == []


def test_timeout_is_retried_then_busy(anthropic_env, monkeypatch, waits):
    server = anthropic_env(replies(PAYLOAD), delay=0.5)
    monkeypatch.setenv("GENMS_CLAUDE_TIMEOUT", "0.1")
    session = ClaudeSession()
    with pytest.raises(ClaudeBusy, match="timeout"):
        ask(session)
    assert len(server.requests) == 3 and waits == [0.05, 0.05]  # backoff 0.5 s, 1 s, capped
    assert session.active and session.usage.output_tokens == 0


def test_retry_after_is_capped(anthropic_env, waits):
    server = anthropic_env(replies(PAYLOAD), errors=[429], retry_after=30)
    assert ask(ClaudeSession()) == Pick(**PAYLOAD)
    assert len(server.requests) == 2 and waits == [0.05]


# ---------------------------------------------------------------------------------------------- fatal errors


def test_bad_key_disables_claude_for_the_run(anthropic_env, monkeypatch):
    server = anthropic_env(replies(PAYLOAD))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "bad")
    session = ClaudeSession()
    with pytest.raises(ClaudeUnavailable) as caught:
        ask(session)
    assert caught.value.kind == "fatal" and caught.value.status == 401
    assert "authentication_error" in session.disabled and not session.active
    with pytest.raises(ClaudeUnavailable, match="off for this run"):
        ask(session)
    assert len(server.requests) == 1


@pytest.mark.parametrize("model, status", [("claude-nonexistent-9", 404)])
def test_unknown_model_is_fatal(anthropic_env, monkeypatch, model, status):
    server = anthropic_env(replies(PAYLOAD))
    monkeypatch.setenv("GENMS_CLAUDE_MODEL", model)
    session = ClaudeSession()
    with pytest.raises(ClaudeUnavailable) as caught:
        ask(session)
    assert caught.value.status == status and "not_found_error" in str(caught.value)
    assert session.disabled and len(server.requests) == 1


def test_deprecated_model_is_refused_before_any_call(anthropic_env, monkeypatch):
    server = anthropic_env(replies(PAYLOAD))
    monkeypatch.setenv("GENMS_CLAUDE_MODEL", OLD)
    session = ClaudeSession()
    assert "November 30th, 2026" in session.disabled and claude.DEFAULT_MODEL in session.disabled
    with pytest.raises(ClaudeUnavailable, match=OLD):
        ask(session)
    assert server.requests == []


def test_forbidden_is_fatal(anthropic_env, waits):
    server = anthropic_env(replies(PAYLOAD), status=403)
    session = ClaudeSession()
    with pytest.raises(ClaudeUnavailable) as caught:
        ask(session)
    assert caught.value.status == 403 and "permission_error" in session.disabled
    assert len(server.requests) == 1 and waits == []


# ---------------------------------------------------------------------------------------------- stop reasons


def cut_off(body):
    return message([text('{"formula": "Mg')], "max_tokens")


def test_cut_off_answer_is_asked_again_with_twice_the_room(anthropic_env):
    server = anthropic_env(replies(cut_off, PAYLOAD))
    assert ask(ClaudeSession()) == Pick(**PAYLOAD)
    first, second = (request["body"]["max_tokens"] for request in server.requests)
    assert first == 100 + claude.THINKING_ALLOWANCE and second == 2 * first


def test_always_cut_off_gives_up_after_two_requests(anthropic_env):
    server = anthropic_env(replies(cut_off))
    session = ClaudeSession()
    with pytest.raises(ClaudeAnswerError, match="cut off"):
        ask(session)
    assert len(server.requests) == 2 and session.active


def test_refusal_is_an_answer_error_not_retried(anthropic_env):
    server = anthropic_env(replies(refusal))
    session = ClaudeSession()
    with pytest.raises(ClaudeAnswerError, match="declined") as caught:
        ask(session)
    assert caught.value.kind == "answer" and session.disabled is None and len(server.requests) == 1


# ---------------------------------------------------------------------------------------------- the fake's rules


def raw_error(**request) -> anthropic.APIStatusError:
    """The error the fake gives the raw SDK client for ``request`` (no SDK retries)."""
    client = anthropic.Anthropic().with_options(max_retries=0)
    base = {"model": claude.DEFAULT_MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(**{**base, **request})
    return caught.value


TOOL = {"name": "Pick", "description": "a pick", "input_schema": Pick.model_json_schema()}
JSON_FORMAT = {"format": {"type": "json_schema", "schema": anthropic.transform_schema(Pick)}}


@pytest.mark.parametrize("request_, status", [
    ({"extra_body": {"temperature": 0.5}}, 400),
    ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "Pick"}}, 400),
    ({"model": HAIKU, "output_config": JSON_FORMAT}, 400),
    ({"model": OLD}, 404),
])
def test_fake_rejects_what_the_api_rejects(anthropic_env, request_, status):
    server = anthropic_env(replies(PAYLOAD))
    error = raw_error(**request_)
    assert error.status_code == status and len(server.requests) == 1
    expected = anthropic.BadRequestError if status == 400 else anthropic.NotFoundError
    assert isinstance(error, expected)
    assert error.body["error"]["type"] == ("invalid_request_error" if status == 400 else "not_found_error")
    mapped = classify(error)
    assert isinstance(mapped, ClaudeUnavailable) and mapped.status == status


def test_fake_rate_limit_carries_retry_headers(anthropic_env):
    anthropic_env(replies(PAYLOAD), status=429, retry_after=0)
    error = raw_error()
    assert isinstance(error, anthropic.RateLimitError)
    assert error.response.headers["retry-after"] == "0" and error.response.headers["x-should-retry"] == "true"
    assert error.body["error"]["type"] == "rate_limit_error"
    assert isinstance(classify(error), ClaudeBusy)


# ---------------------------------------------------------------------------------------------- helpers


def test_model_info_request_shapes():
    sonnet, haiku, old = model_info(claude.DEFAULT_MODEL), model_info(HAIKU), model_info(OLD)
    assert (sonnet.json_schema_output, sonnet.forced_tool_choice, sonnet.deprecated) == (True, False, None)
    assert (haiku.json_schema_output, haiku.forced_tool_choice, haiku.deprecated) == (False, True, None)
    assert isinstance(old.deprecated, str) and "2026" in old.deprecated
    assert not model_info("claude-nonexistent-9").known and sonnet.known


def test_timeout_for(monkeypatch):
    monkeypatch.delenv("GENMS_CLAUDE_TIMEOUT", raising=False)
    assert timeout_for("llm_cif") == 300.0 and timeout_for("understand") == 30.0 and timeout_for("other") == 60.0
    monkeypatch.setenv("GENMS_CLAUDE_TIMEOUT", "7.5")
    assert timeout_for("llm_cif") == 7.5
    for bad in ("soon", "nan", "-1", "0", "1e9"):
        monkeypatch.setenv("GENMS_CLAUDE_TIMEOUT", bad)
        assert timeout_for("understand") == 30.0


def test_usage_summary():
    assert usage_summary(None) == "Claude: not used"
    record = {"model": "claude-sonnet-5-5", "calls": 3, "answered": 2, "input_tokens": 1200, "output_tokens": 50,
              "cache_read_input_tokens": 0, "cache_creation_input_tokens": 4000, "cost_usd": 0.0129, "disabled": None}
    line = usage_summary(record)
    assert "claude-sonnet-5-5" in line and "3 calls (2 answered)" in line and "1,200 input" in line
    assert "about $0.0129" in line and "off for this run" not in line
    assert "price unknown" in usage_summary({**record, "cost_usd": None})
    assert usage_summary({**record, "disabled": "401"}).endswith("off for this run: 401")
