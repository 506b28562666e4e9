"""The Claude planner against the request test set (tests/data/requests.yaml), through the fake Messages API.

For every request the fake answers the ``RequestReading`` a perfect Claude would give: the fields
the test set expects for that request. The spec the planner builds from it (the real ``anthropic``
client, ``tools.claude`` and ``agent.planner.spec_from_reading``) must have every expected field
right. This proves that the schema Claude answers and its mapping to ``SearchSpec`` can express
every vocabulary class the offline reader knows (applications, novelty, stability cuts, crystal
systems, layering, structure types, counts ...). Fields the schema does not carry must follow from
the application or structure type Claude names (``DERIVED``).

The prompt is checked too: the planner must tell Claude what the vocabulary means (the novelty
and stability readings, the applications, structure types and crystal systems), as the offline
reader applies it, and the schema must offer the fields and names.
"""

from __future__ import annotations

import re

import pytest
import yaml
from fake_anthropic import answer, prompt_text
from test_requests import REQUESTS, _same

from agent.planner import Planner, RequestReading
from tools.spec import CRYSTAL_SYSTEMS
from tools.vocabulary import vocabulary

ENTRIES = yaml.safe_load(REQUESTS.read_text())
READING_FIELDS = set(RequestReading.model_fields)
DERIVED: set[str] = set()  # fields the schema cannot say (none: required_any is said, or implied by an application)
HAIKU = "claude-haiku-5-5"  # answers by a forced tool call instead of JSON-schema output
REQUEST_LINE = re.compile(r"^Request: (.*)$", re.MULTILINE | re.DOTALL)


def perfect_reading(expected: dict) -> dict:
    """What a perfect Claude answers: the request's expected fields that the schema holds (empty ones left out)."""
    return {k: v for k, v in expected.items() if k in READING_FIELDS and v is not None}


def _responder(bodies: list[dict]):
    readings = {entry["request"]: perfect_reading(entry["expect"]) for entry in ENTRIES}

    def respond(body):
        bodies.append(body)
        request = REQUEST_LINE.search(body["messages"][0]["content"][0]["text"]).group(1)
        return answer(body, readings[request])

    return respond


def _misread(entries: list[dict]) -> tuple[int, list[str]]:
    """(fields checked, one line per field the Claude planner's spec got wrong)."""
    checked, wrong = 0, []
    for entry in entries:
        request, expected = entry["request"], entry["expect"]
        planner = Planner(use_claude=True, use_retrieval=False, use_gfn=False)
        spec = planner.understand(request)
        if not planner.steps["understand"].startswith("claude"):
            wrong.append(f"{request!r}: read by {planner.steps['understand']}")
            continue
        for field, wanted in expected.items():
            checked += 1
            if not _same(field, getattr(spec, field), wanted):
                wrong.append(f"{request!r}: {field}: got {getattr(spec, field)!r}, expected {wanted!r}")
    return checked, wrong


def test_every_expected_field_can_be_said_in_the_schema():
    fields = {field for entry in ENTRIES for field in entry["expect"]}
    assert fields - READING_FIELDS <= DERIVED, f"RequestReading cannot say: {sorted(fields - READING_FIELDS - DERIVED)}"
    for entry in ENTRIES:  # a derived field comes with what it is derived from
        if set(entry["expect"]) & DERIVED:
            assert {"application", "structure_type"} & set(entry["expect"]), entry["request"]


def test_the_claude_planner_reads_every_request_right(anthropic_env):
    bodies: list[dict] = []
    server = anthropic_env(_responder(bodies))
    checked, wrong = _misread(ENTRIES)
    assert len(server.requests) == len(ENTRIES) == len(bodies)
    assert checked == sum(len(entry["expect"]) for entry in ENTRIES) >= 1400
    assert not wrong, f"{len(wrong)} of {checked} fields wrong:\n" + "\n".join(wrong[:40])
    # every call sent the same system prompt and schema (one cached prefix), and its own request
    assert len({str(body["system"]) for body in bodies}) == 1
    assert len({str(body["output_config"]) for body in bodies}) == 1
    assert {REQUEST_LINE.search(prompt_text(body)).group(1) for body in bodies} == {e["request"] for e in ENTRIES}


def test_the_tool_call_path_reads_them_too(anthropic_env, monkeypatch):
    """Models without JSON-schema output answer by a forced tool call: every 8th request, deterministic."""
    bodies: list[dict] = []
    anthropic_env(_responder(bodies))
    monkeypatch.setenv("GENMS_CLAUDE_MODEL", HAIKU)  # after the fixture, which clears it
    sample = ENTRIES[::8]
    checked, wrong = _misread(sample)
    assert not wrong, "\n".join(wrong[:40])
    assert checked >= 150 and {body["tool_choice"]["name"] for body in bodies} == {"RequestReading"}


def test_the_prompt_tells_claude_what_the_vocabulary_means(anthropic_env):
    bodies: list[dict] = []
    anthropic_env(_responder(bodies))
    Planner(use_claude=True).understand("generate a novel stable perovskite")
    (body,) = bodies
    system = "\n".join(block["text"] for block in body["system"])
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}  # the guide is part of the cached prefix
    for application in vocabulary().applications:
        assert f"{application.name}: {application.why}" in system
    assert "'novel', 'new', 'unknown'" in system and "mean novel_against ['MP', 'ICSD']" in system
    assert "'not in the Materials Project' ['MP']" in system
    for wording in (w for w in vocabulary().stability_wordings if w.kind == "cut"):
        assert f"{', '.join(repr(e) for e in wording.examples)}: {wording.cut:g} ({wording.why})" in system
    assert "'stable', 'thermodynamically stable', 'on the convex hull'" in system and ": 0.05 (" in system
    assert "'metastable', 'near the hull'" in system and "'synthesizable'" in system
    assert "'air-stable'" in system and "is no hull cut" in system
    assert all(system_name in system for system_name in CRYSTAL_SYSTEMS) and "'rhombohedral' is trigonal" in system
    for stype in vocabulary().structure_types:
        assert f"{stype.name} ({stype.example}): ratio {stype.stoichiometry}" in system
    assert "'2D'" in system and "'van der Waals'" in system and "'Zintl' is not searchable" in system
    assert "quaternary 4" in system and "thio- S" in system and "titanate Ti" in system
    assert "rare earths: Ce, Dy" in system
    assert "Request: generate a novel stable perovskite" in prompt_text(body)
    schema = body["output_config"]["format"]["schema"]
    for field in ("max_e_above_hull", "crystal_system", "layered", "structure_type", "n_results", "application", "novel_against"):
        assert field in schema["properties"], field
    assert "'metastable', 'near the hull', 'synthesizable' 0.1" in schema["properties"]["max_e_above_hull"]["description"]
    assert "mean ['MP', 'ICSD']" in schema["properties"]["novel_against"]["description"]
    names = str(schema["properties"]["structure_type"]) + str(schema["properties"]["crystal_system"]) + str(schema["properties"]["application"])
    for name in [*(t.name for t in vocabulary().structure_types), *CRYSTAL_SYSTEMS, *(a.name for a in vocabulary().applications)]:
        assert repr(name) in names or f'"{name}"' in names, name


@pytest.mark.parametrize(
    ("request_text", "reading", "expected"),
    [
        # the structure type's ratio, anion class and groups; the reading's own fields win
        ("a NASICON-type sodium ionic conductor", {"structure_type": "NASICON", "application": "solid electrolyte",
                                                   "required_elements": ["Na"]},
         {"stoichiometry": "1:2:3:12", "anion_class": "oxide", "required_any": [["As", "Mo", "P", "S", "Si", "W"]],
          "required_elements": ["Na"], "band_gap": 4.0}),
        ("a kesterite selenide", {"structure_type": "kesterite", "anion_class": "selenide"},
         {"stoichiometry": "2:1:1:4", "anion_class": "selenide"}),
        ("a layered rock-salt cathode", {"structure_type": "layered rock salt", "application": "battery cathode"},
         {"stoichiometry": "1:1:2", "anion_class": "oxide", "layered": True, "required_elements": ["Li"]}),
        ("NASICON cathodes in the ratio 3:2:3:12", {"structure_type": "NASICON", "stoichiometry": "3:2:3:12",
                                                    "application": "battery cathode"},
         {"stoichiometry": "3:2:3:12", "required_any": [["Co", "Cr", "Cu", "Fe", "Mn", "Mo", "Nb", "Ni", "Ti", "V"],
                                                        ["As", "Mo", "P", "S", "Si", "W"]]}),
        # a cut above what the search allows is dropped with a note, not the whole reading
        ("a spinel within 2 eV/atom of the hull", {"family": "spinel", "max_e_above_hull": 2.0},
         {"family": "spinel", "max_e_above_hull": None}),
    ],
)
def test_reading_fields_are_mapped(request_text, reading, expected):
    from agent.planner import spec_from_reading

    spec, notes = spec_from_reading(request_text, RequestReading(**reading), {})
    for field, value in expected.items():
        assert getattr(spec, field) == value, (field, getattr(spec, field))
    assert bool(notes) == (reading.get("max_e_above_hull", 0) > 1)


def test_a_crystal_system_that_contradicts_the_space_group_is_a_conflict(anthropic_env):
    from tools.spec import SpecConflict

    anthropic_env(lambda body: answer(body, {"family": "perovskite", "spacegroup": 62, "crystal_system": "cubic"}))
    with pytest.raises(SpecConflict, match="space group 62 is orthorhombic, not cubic"):
        Planner(use_claude=True).understand("a cubic perovskite in Pnma")
