"""The LangChain wrappers: schemas the model sees, validation, and real results."""

import pytest
from pydantic import ValidationError

from tools.langchain_tools import chemistry_tools, check_formulas_tool, check_structure_tool, score_structures_tool
from tools.structure import write_cif


def test_tools_expose_bounded_schemas():
    tools = {tool.name: tool for tool in chemistry_tools()}
    assert set(tools) == {
        "check_formulas", "check_structure", "score_structures", "propose_formulas", "generate_template_structures",
        "describe_family", "retrieve_knowledge", "recall_candidates", "lookup_material",
    }
    schema = tools["score_structures"].tool_call_schema.model_json_schema()
    assert schema["properties"]["fmax"]["maximum"] == 1.0
    assert schema["properties"]["cifs"]["maxItems"] == 50
    retrieve = tools["retrieve_knowledge"].tool_call_schema.model_json_schema()
    assert retrieve["properties"]["k"]["maximum"] == 50 and retrieve["properties"]["query"]["maxLength"] == 2000


def test_knowledge_tools_answer_and_refuse():
    from tools.langchain_tools import recall_candidates_tool, retrieve_knowledge_tool

    found = retrieve_knowledge_tool.invoke({"query": "pyrochlore A2B2O7", "k": 2})
    assert found["passages"][0]["source"] == "genms://knowledge/families/pyrochlore" and len(found["passages"]) == 2
    with pytest.raises(ValidationError):
        retrieve_knowledge_tool.invoke({"query": "spinel", "k": 500})
    assert "unknown crystal family" in recall_candidates_tool.invoke({"query": "x", "family": "quasicrystal"})["error"]


def test_check_formulas_tool():
    reports = check_formulas_tool.invoke({"formulas": ["SrTiO3", "Xx2O"], "exclude": []})
    assert reports[0]["reduced_formula"] == "SrTiO3" and "perovskite" in reports[0]["families"]
    assert not reports[1]["valid"] and "unknown element" in reports[1]["error"]


def test_check_structure_tool(srtio3):
    report = check_structure_tool.invoke({"cif": write_cif(srtio3)})
    assert report["cif_valid"] and report["spacegroup_number"] == 221


def test_score_structures_tool(srtio3):
    reports = score_structures_tool.invoke({"cifs": [write_cif(srtio3), "not a cif"]})
    assert reports[0]["plausible"] and reports[0]["formation_energy_per_atom"] < -3
    assert not reports[1]["plausible"] and "not a readable CIF" in reports[1]["reason"]


@pytest.mark.parametrize(
    "arguments",
    [
        {"cifs": []},
        {"cifs": ["x"] * 51},
        {"cifs": ["x"], "fmax": 2.0},
        {"cifs": ["x"], "max_steps": 0},
        {"cifs": "not a list"},
    ],
)
def test_out_of_range_arguments_are_refused(arguments):
    with pytest.raises(ValidationError):
        score_structures_tool.invoke(arguments)


def test_empty_formula_list_is_refused():
    with pytest.raises(ValidationError):
        check_formulas_tool.invoke({"formulas": []})


def test_propose_and_generate_tools(monkeypatch):
    from tools.langchain_tools import generate_template_tool, propose_formulas_tool

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = propose_formulas_tool.invoke({"request": "a novel pyrochlore oxide", "n": 8})
    assert result["proposer"] == "offline" and len(result["proposals"]) == 8
    formula = next(p["formula"] for p in result["proposals"] if p["passed"])
    structures = generate_template_tool.invoke({"formula": formula, "family": "pyrochlore", "n": 2})
    assert len(structures) == 2 and "_cell_length_a" in structures[0]["cif"]
    assert "kind" in propose_formulas_tool.invoke({"request": "make me a sandwich"})
    assert "does not fit" in generate_template_tool.invoke({"formula": "NaCl", "family": "garnet"})["error"]
    with pytest.raises(ValidationError):
        generate_template_tool.invoke({"formula": "NaCl", "n": 500})
