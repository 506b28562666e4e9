"""genms chat: driven through a pseudo-terminal like a user, and the Claude path via a fake server."""

import json
import os
import shutil
import sys
from pathlib import Path

import pexpect
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from agent.chat import build_chat_agent, chat_model, close_dangling_tool_calls, last_search, open_checkpointer
from agent.chat_model import OfflineChatModel, plan
from fake_anthropic import message, text, tool_use
from tools.langchain_tools import chemistry_tools

GENMS = shutil.which("genms") or str(Path(sys.executable).parent / "genms")


QUICK_BUDGET = ("-H", "10", "-W", "2", "-L", "1", "--relax-steps", "10")


def spawn(home: Path, thread: str, budget: tuple[str, ...] = QUICK_BUDGET) -> pexpect.spawn:
    env = {**os.environ, "GENMS_HOME": str(home), "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    env.pop("ANTHROPIC_API_KEY", None)
    args = ["chat", "--thread", thread, *budget]
    return pexpect.spawn(GENMS, args, env=env, encoding="utf-8", timeout=240, dimensions=(50, 200))


def test_chat_session_through_a_terminal(tmp_path):
    """A search, Ctrl-C during a second one, then the thread resumed by a new process."""
    session = spawn(tmp_path, "lab")
    session.expect("offline planner")
    session.expect("you> ")
    session.sendline("is LiMn2O4 known?")
    session.expect("known in MP, ICSD")
    session.expect("you> ")
    session.sendline("find two novel pyrochlore oxides")  # two: one generate round of -W 2 formulae
    session.expect("calling search_materials")
    session.expect(r"Search finished in \d+ s with \d+ good candidates")
    session.expect("you> ")

    # Ctrl-C interrupts the step, not the session (in a thread of its own, so "lab" stays as it
    # is). Ten good spinels at this budget take minutes (rounds of two formulae each): the
    # interrupt cannot lose the race against the search's end, even when the pty is read late.
    session.sendline("/new")
    session.expect("new thread: thread-")
    session.expect("you> ")
    session.sendline("find ten novel spinel oxides")
    session.expect("calling search_materials")
    session.expect("understand: search")
    session.sendintr()
    session.expect("interrupted")
    session.expect("you> ")
    session.sendline("is NaCl known?")
    session.expect("NaCl: known in MP")
    session.expect("you> ")
    session.sendline("/quit")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0

    resumed = spawn(tmp_path, "lab")
    resumed.expect(r"thread lab; (\d+) earlier messages")
    assert int(resumed.match.group(1)) >= 6
    resumed.expect("you> ")
    resumed.sendline("/history")
    resumed.expect("you: is LiMn2O4 known")
    resumed.expect("you> ")
    resumed.sendline("show me the pyrochlores we found")
    resumed.expect("calling recall_candidates")
    resumed.expect(r"\d+ candidates from earlier runs")
    resumed.expect(r"\(pyrochlore, Fd-3m\): E_f -\d\.\d+ eV/atom")
    resumed.expect("you> ")
    resumed.sendline("/results")
    resumed.expect(r"good candidates")
    resumed.expect("you> ")
    resumed.sendline(f"/save {tmp_path / 'saved'}")
    resumed.expect("saved")
    resumed.expect("you> ")
    resumed.sendline("/quit")
    resumed.expect(pexpect.EOF)
    saved = json.loads((tmp_path / "saved" / "results.json").read_text())
    assert saved["spec"]["family"] == "pyrochlore" and saved["decisions"]


@pytest.mark.parametrize(
    ("message_text", "tool"),
    [
        ("is LiMn2O4 known?", "check_formulas"),
        ("Are SrTiO3 and CaTiO3 in the Materials Project?", "check_formulas"),
        ("what is a garnet?", "describe_family"),
        ("find a novel spinel oxide containing Mn", "search_materials"),
        ("propose a lead-free halide perovskite", "propose_formulas"),
        ("show me the spinels we found", "recall_candidates"),
        ("what did earlier runs give for Mn oxides?", "recall_candidates"),
        ("what is the Goldschmidt tolerance factor?", "retrieve_knowledge"),
        ("what is the band gap of anatase TiO2?", "lookup_material"),
        ("band gap of GaAs", "lookup_material"),
        ("what is the formation energy of LiFePO4", "lookup_material"),
        ("is rutile stable?", "lookup_material"),
        ("what space group does NaCl have", "lookup_material"),
        ("tell me about LiCoO2's polymorphs", "lookup_material"),
        ("what is anatase?", "lookup_material"),
        ("what is a perovskite?", "describe_family"),
        ("find perovskites like SrTiO3 with a band gap near 3 eV", "search_materials"),
        ("find a stable rutile-type oxide containing Sn", "search_materials"),
    ],
)
def test_offline_planner_routes_messages(message_text, tool):
    assert plan(message_text).tool_calls[0]["name"] == tool


def test_offline_planner_looks_up_the_named_polymorph():
    assert plan("what is the band gap of anatase TiO2?").tool_calls[0]["args"]["formula"] == "anatase TiO2"
    assert plan("is rutile stable?").tool_calls[0]["args"]["formula"] == "rutile"
    assert plan("tell me about LiCoO2's polymorphs").tool_calls[0]["args"]["formula"] == "LiCoO2"


def test_offline_planner_explains_what_it_cannot_do():
    assert "I can check formulas" in plan("make me a sandwich").content
    assert "I can check formulas" in plan("what can you do?").content
    assert "cannot search" in plan("find a spinel without oxygen, sulphur, selenium or any anion").content


def test_thread_survives_an_interrupted_tool_call(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMS_HOME", str(tmp_path))
    agent = build_chat_agent(OfflineChatModel(), chemistry_tools(), open_checkpointer(tmp_path / "c.sqlite"))
    config = {"configurable": {"thread_id": "t"}}
    call = {"name": "check_formulas", "args": {"formulas": ["NaCl"]}, "id": "call_1", "type": "tool_call"}
    agent.update_state(config, {"messages": [HumanMessage("is NaCl known?"), AIMessage("", tool_calls=[call])]}, as_node="agent")
    close_dangling_tool_calls(agent, config)
    messages = agent.get_state(config).values["messages"]
    assert isinstance(messages[-1], ToolMessage) and messages[-1].content == "interrupted by the user"
    reply = agent.invoke({"messages": [HumanMessage("is NaCl known?")]}, config)
    assert "NaCl: known in MP" in reply["messages"][-1].content
    assert last_search(reply["messages"]) is None


def _claude_turns(body):
    """First turn: call check_formulas; after the tool result: answer in text."""
    last = body["messages"][-1]
    blocks = last["content"] if isinstance(last["content"], list) else []
    results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
    if results:
        data = results[0]["content"]
        data = data if isinstance(data, str) else json.dumps(data)
        return message([text(f"From the tool: {'known' if 'MP' in data else 'novel'}.")])
    names = [tool["name"] for tool in body.get("tools", [])]
    assert "check_formulas" in names and "score_structures" in names
    return message([text("Let me check."), tool_use("check_formulas", {"formulas": ["LiMn2O4"]})], stop_reason="tool_use")


@pytest.mark.parametrize("model_name", [None, "claude-haiku-5-5"])
def test_claude_chat_with_tool_use_turns(anthropic_env, monkeypatch, tmp_path, model_name):
    server = anthropic_env(_claude_turns)
    if model_name:
        monkeypatch.setenv("GENMS_CLAUDE_MODEL", model_name)
    model = chat_model()
    assert type(model).__name__ == "ChatAnthropic"
    agent = build_chat_agent(model, chemistry_tools(), open_checkpointer(tmp_path / "c.sqlite"))
    reply = agent.invoke({"messages": [HumanMessage("is LiMn2O4 known?")]}, {"configurable": {"thread_id": "x"}})
    assert reply["messages"][-1].content == "From the tool: known."
    tool_result = next(m for m in reply["messages"] if isinstance(m, ToolMessage))
    assert json.loads(tool_result.content)[0]["known_in"] == ["MP", "ICSD", "OQMD"]
    assert len(server.requests) == 2 and server.requests[0]["body"]["model"] == (model_name or "claude-sonnet-5-5")
    assert server.requests[0]["body"]["system"]  # the system prompt travels as Anthropic's system field



def test_a_failing_turn_keeps_the_session(tmp_path, monkeypatch):
    """A turn whose model or graph raises (an API error, a bug) prints one line; the chat goes on."""
    from io import StringIO

    from rich.console import Console

    from agent.chat import ChatSession

    monkeypatch.setenv("GENMS_HOME", str(tmp_path))
    console = Console(file=StringIO(), width=300)
    session = ChatSession(console, "t", {})

    def broken(*args, **kwargs):
        raise RuntimeError("overloaded [/red]\nsecond line")

    with monkeypatch.context() as patch:
        patch.setattr(session.agent, "stream", broken)
        session.turn("is NaCl known?")
    session.turn("is NaCl known?")
    session.turn("x" * 5000)
    shown = console.file.getvalue()
    assert "error: RuntimeError: overloaded [/red] second line (the session goes on)" in shown
    assert "NaCl: known in MP" in shown
    assert "That message is 5,000 characters; at most 4,000." in shown


def _session_with_claude(tmp_path, monkeypatch):
    from io import StringIO

    from rich.console import Console

    from agent.chat import ChatSession

    monkeypatch.setenv("GENMS_HOME", str(tmp_path))
    console = Console(file=StringIO(), width=300)
    session = ChatSession(console, "t", {})
    assert type(session.model).__name__ == "ChatAnthropic"
    return session, console


def test_a_fatal_claude_error_switches_the_chat_to_the_offline_planner(anthropic_env, tmp_path, monkeypatch):
    server = anthropic_env(_claude_turns)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "revoked")  # the fake answers 401 authentication_error
    session, console = _session_with_claude(tmp_path, monkeypatch)
    session.turn("is NaCl known?")
    shown = console.file.getvalue()
    assert "Claude is unavailable: 401 authentication_error: invalid x-api-key; this session goes on with the offline planner" in shown
    assert "Traceback" not in shown and len(server.requests) == 1  # a fatal error is not retried
    session.turn("is NaCl known?")
    assert "NaCl: known in MP" in console.file.getvalue() and len(server.requests) == 1
    assert sum(isinstance(m, HumanMessage) for m in session.messages()) == 2  # the thread is kept


def test_a_transient_claude_error_keeps_claude_for_the_next_turn(anthropic_env, tmp_path, monkeypatch):
    server = anthropic_env(_claude_turns, errors=[529, 529, 529])
    session, console = _session_with_claude(tmp_path, monkeypatch)
    session.turn("is LiMn2O4 known?")
    assert "Claude did not answer (transient): 529 overloaded_error" in console.file.getvalue()
    assert len(server.requests) == 3  # the first try and the SDK's two retries
    session.turn("is LiMn2O4 known?")
    assert "From the tool: known." in console.file.getvalue() and type(session.model).__name__ == "ChatAnthropic"


def test_claude_chat_with_thinking_blocks(anthropic_env, tmp_path):
    from fake_anthropic import thinking

    def respond(body):
        reply = _claude_turns(body)
        reply["content"] = [thinking(), *reply["content"]]  # current models think first, also between tool calls
        return reply

    server = anthropic_env(respond)
    agent = build_chat_agent(chat_model(), chemistry_tools(), open_checkpointer(tmp_path / "c.sqlite"))
    reply = agent.invoke({"messages": [HumanMessage("is LiMn2O4 known?")]}, {"configurable": {"thread_id": "x"}})
    assert reply["messages"][-1].text == "From the tool: known."
    sent_back = server.requests[1]["body"]["messages"][1]["content"]
    assert sent_back[0]["type"] == "thinking" and sent_back[0]["signature"]  # the thinking block goes back unchanged
    assert "temperature" not in server.requests[0]["body"] and server.requests[0]["body"]["max_tokens"] == 8192


def test_search_results_reach_the_model_as_a_digest():
    from agent.chat import OLDER_TOOL_RESULT_CHARS, for_the_model

    candidate = {"formula": "MnGa2O4", "family": "spinel", "prototype": "MgAl2O4", "generator": "template",
                 "formation_energy_per_atom": -2.1, "e_above_hull": 0.01, "plausible": True, "known_in": [],
                 "reason": None, "checks": {"spacegroup_symbol": "Fd-3m"}, "cif": "data_x\n" + "x" * 50_000}
    result = {"request": "spinels", "planner": "claude", "spec": {"family": "spinel"}, "candidates": [candidate] * 3,
              "screened": [{"formula": "A"}] * 400, "decisions": [{"reason": "y" * 1000}] * 50, "context": [], "files": {}}
    search = ToolMessage(content=json.dumps(result), tool_call_id="1", name="search_materials")
    note = ToolMessage(content=json.dumps({"note": "z" * 20_000}), tool_call_id="2", name="lab_note")
    shown = for_the_model([HumanMessage("find spinels"), search, note, HumanMessage("and now?")])
    digest = shown[1].content
    assert "data_x" not in digest and len(digest) < 3_000
    assert "MnGa2O4" in digest and "Fd-3m" in digest and '"n_screened": 400' in digest.replace('\\"', '"')
    assert len(shown[2].content) < OLDER_TOOL_RESULT_CHARS + 1_000  # an earlier turn's result is cut shorter
    assert json.loads(shown[1].artifact) == result  # the thread keeps the whole result


def test_the_offline_planner_says_which_words_the_search_did_not_act_on():
    from agent.chat_model import _summarise_search

    candidate = {"formula": "MnGa2O4", "family": "spinel", "checks": {"spacegroup_symbol": "Fd-3m"}, "plausible": True,
                 "formation_energy_per_atom": -2.1, "e_above_hull": 0.01, "known_in": []}
    result = {"seconds": 12, "planner": "offline", "candidates": [candidate],
              "spec": {"family": "spinel", "ignored_words": ["museum", "display"]}}
    text = _summarise_search(result)
    assert "I did not understand: museum, display; the search ran without them." in text
    assert "did not understand" not in _summarise_search({**result, "spec": {"family": "spinel", "ignored_words": []}})


def test_the_offline_planner_asks_back_when_the_key_word_was_not_understood():
    """'a Zintl phase with Ba' would search any Ba compound: the chat asks first, and searches the
    request as read once the user says yes; a request it reads whole is searched at once."""
    from langchain_core.messages import HumanMessage

    from agent.chat_model import ASK_BACK, OfflineChatModel, plan

    model = OfflineChatModel()
    question = model.invoke([HumanMessage("find a novel Zintl phase with Ba")])
    assert question.content.startswith(ASK_BACK) and "'zintl'" in question.content and not question.tool_calls
    agreed = model.invoke([HumanMessage("find a novel Zintl phase with Ba"), question, HumanMessage("yes, search anyway")])
    assert agreed.tool_calls[0]["name"] == "search_materials"
    assert agreed.tool_calls[0]["args"] == {"request": "find a novel Zintl phase with Ba"}
    rephrased = model.invoke([HumanMessage("find a novel Zintl phase with Ba"), question,
                              HumanMessage("a novel antimonide with Ba and Zn")])
    assert rephrased.tool_calls and rephrased.tool_calls[0]["args"]["request"] == "a novel antimonide with Ba and Zn"
    nothing = plan("search for clathrates")
    assert nothing.content.startswith(ASK_BACK) and "'clathrates'" in nothing.content
    assert plan("a novel spinel with Cr").tool_calls[0]["name"] == "search_materials"
    assert plan("a novel thiospinel for battery cathodes").tool_calls  # every word read: no question
