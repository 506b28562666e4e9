"""Claude few-shot symmetry predictor (tools.claude_symmetry) through a fake Messages API, never the internet."""

from __future__ import annotations

import re

import pytest
import torch

from fake_anthropic import answer, prompt_text, refusal
from generators.unimdm.sampler import MAX_CONVENTIONAL_ATOMS, UniMDMSampler
from generators.unimdm.wyckoff import check_assignment, conventional_counts
from tools.claude_symmetry import ClaudeSymmetrySource, predict_symmetry

SRTIO3 = {38: 1, 22: 1, 8: 3}  # primitive-cell counts by Z
NACL = {11: 1, 17: 1}


@pytest.fixture(autouse=True)
def no_claude_key(monkeypatch):
    """Offline unless a test starts the fake Anthropic server; one torch thread (shared machine)."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def candidate(space_group: int, wyckoff: dict, rationale: str = "from the fake model") -> dict:
    """A candidate in the schema's shape: ``{element: letters}`` as a list of ``{"element", "letters"}``."""
    return {"space_group": space_group, "wyckoff": [{"element": el, "letters": v} for el, v in wyckoff.items()],
            "rationale": rationale}


def replies(*rounds):
    """A responder answering request i with ``rounds[i]`` (a candidate list, or "refusal")."""
    state = {"i": 0}

    def respond(body):
        reply = rounds[min(state["i"], len(rounds) - 1)]
        state["i"] += 1
        if reply == "refusal":
            return refusal(body)
        return answer(body, {"candidates": reply})

    return respond


def prompt_of(request: dict) -> str:
    return prompt_text(request["body"])


@pytest.mark.parametrize("model", [None, "claude-haiku-5-5"])  # JSON-schema output; a forced tool call
def test_valid_reply_is_returned_in_the_sampler_shape(anthropic_env, monkeypatch, model):
    server = anthropic_env(replies([candidate(221, {"Sr": ["1a"], "Ti": ["b"], "O": ["c"]}),
                                    candidate(99, {"Sr": ["a"], "Ti": ["b"], "O": ["c", "a"]})]))
    if model:
        monkeypatch.setenv("GENMS_CLAUDE_MODEL", model)
    result = predict_symmetry(SRTIO3, band_gap=3.0, top_k=2)
    assert result.source == "claude" and result.resampled == 0 and len(server.requests) == 1
    assert server.requests[0]["body"]["model"] == (model or "claude-sonnet-5-5")
    first, second = result.candidates
    assert first["space_group"] == 221 and first["letters"] == {8: ["c"], 22: ["b"], 38: ["a"]}  # '1a' read as 'a'
    assert second["letters"][8] == ["a", "c"]  # pyxtal's letter order, as the offline predictor
    assert [c["log_prob"] for c in result.candidates] == [0.0, -1.0]  # rank-based weights exp(-rank)
    for c in result.candidates:
        assert check_assignment(c["space_group"], SRTIO3, c["letters"]) == (True, "ok")
        assert c["source"] == "claude" and c["rationale"] == "from the fake model"
    prompt = prompt_of(server.requests[0])
    assert "primitive cell: O 3, Ti 1, Sr 1 (5 atoms)" in prompt and "band gap 3 eV" in prompt and "Propose up to 2" in prompt

    sampler = UniMDMSampler(symmetry_source=ClaudeSymmetrySource(fallback=_no_fallback))
    nacl_server = anthropic_env(replies([candidate(225, {"Na": ["a"], "Cl": ["b"]})]))
    picked = sampler.propose_symmetry(NACL, space_group=225)
    assert picked[0]["space_group"] == 225 and picked[0]["letters"] == {11: ["a"], 17: ["b"]}
    assert "imposed: 225 (Fm-3m)" in prompt_of(nacl_server.requests[0]) and "Propose up to 1 " in prompt_of(nacl_server.requests[0])


def _no_fallback(*args):
    raise AssertionError("the offline predictor must not be used here")


def test_invalid_reply_is_resampled_with_the_reason(anthropic_env):
    server = anthropic_env(replies([candidate(221, {"Sr": ["a"], "Ti": ["b"], "O": ["c", "c"]})],
                                   [candidate(221, {"Sr": ["b"], "Ti": ["a"], "O": ["d"]})]))
    result = predict_symmetry(SRTIO3, band_gap=3.0, top_k=5, fallback=_no_fallback)
    assert len(server.requests) == 2 and result.rounds == 2 and result.resampled == 1
    assert "multiplicities of element 8 (O) do not sum to 3" in prompt_of(server.requests[1])
    assert "rejected by validation" not in prompt_of(server.requests[0])
    assert result.source == "claude" and len(result.candidates) == 1
    assert result.candidates[0]["letters"] == {8: ["d"], 22: ["a"], 38: ["b"]}


@pytest.mark.parametrize("failure", ["overloaded", "timeout", "garbage", "bad key"])
def test_failures_fall_back_to_the_offline_predictor(anthropic_env, monkeypatch, failure):
    invalid = [candidate(231, {"Na": ["a"], "Cl": ["b"]}), candidate(225, {"Na": ["a"], "Cl": ["a"]}),
               candidate(225, {"Na": ["a"], "Qq": ["b"]})]
    if failure == "overloaded":
        server = anthropic_env(replies(invalid), status=529)
    elif failure == "timeout":
        server = anthropic_env(replies(invalid), delay=2)
        monkeypatch.setenv("GENMS_CLAUDE_TIMEOUT", "0.3")
    elif failure == "bad key":
        server = anthropic_env(replies(invalid))
        monkeypatch.setenv("ANTHROPIC_API_KEY", "revoked")
    else:
        server = anthropic_env(replies("refusal", invalid, invalid))
    source = ClaudeSymmetrySource()
    candidates = source(NACL, None, -2.0, None, 3)
    result = source.last
    assert result.source == "offline" and source.fallbacks == 1 and candidates
    if failure == "garbage":
        assert len(server.requests) == 3 and result.resampled == 6
        assert result.note.startswith("offline (Claude gave no valid candidate in 3 rounds")
        last_prompt = prompt_of(server.requests[2])
        assert "space group 231 is not in 1-230" in last_prompt and "unknown element 'Qq'" in last_prompt
        assert "a Wyckoff position without free parameters is used twice" in last_prompt
        assert "Claude declined to answer" in prompt_of(server.requests[1])
    elif failure == "bad key":  # fatal: no retry, and the source's session calls Claude no more
        assert len(server.requests) == 1 and result.note.startswith("offline (Claude failed: fatal: 401")
        source(NACL, None, -2.0, None, 3)
        assert len(server.requests) == 1 and source.fallbacks == 2
    else:
        assert result.note.startswith("offline (Claude failed:")
    for c in candidates:  # the offline predictor's candidates are consistent too
        assert c["source"] == "offline" and check_assignment(c["space_group"], NACL, c["letters"]) == (True, "ok")


def test_few_shot_examples_come_from_mp20_train(anthropic_env, monkeypatch):
    import generators.datasets as datasets
    from tools import claude_symmetry

    splits, original = [], datasets.iter_mp20

    def recording(split):
        splits.append(split)
        return original(split)

    monkeypatch.setattr(datasets, "iter_mp20", recording)
    claude_symmetry._train_rows.cache_clear()
    claude_symmetry._few_shot_cached.cache_clear()
    server = anthropic_env(replies([candidate(221, {"Sr": ["a"], "Ti": ["b"], "O": ["c"]})]))
    predict_symmetry(SRTIO3, band_gap=3.0, top_k=1, fallback=_no_fallback)
    claude_symmetry._train_rows.cache_clear()  # later callers read the unwrapped function again
    claude_symmetry._few_shot_cached.cache_clear()
    assert splits == ["train"]
    block = re.search(r"<examples>\n(.*?)\n</examples>", prompt_of(server.requests[0]), re.S).group(1).splitlines()
    assert len(block) == claude_symmetry.N_EXAMPLES
    train = datasets.load_mp20("train").set_index("material_id")
    held_out = set(datasets.load_mp20("val")["material_id"]) | set(datasets.load_mp20("test")["material_id"])
    pattern = r"(\S+) (\S+): primitive counts (.*?); .* -> space group (\d+) \(.*?\); Wyckoff (.*)"
    for line in block:
        material_id, formula, counts, group, letters = re.fullmatch(pattern, line).groups()
        assert material_id in train.index and material_id not in held_out
        assert train.loc[material_id, "pretty_formula"] == formula
        counts = {_z(el): int(n) for el, n in (item.split() for item in counts.split(", "))}
        letters = {_z(el): v.split() for el, v in (item.split(": ") for item in letters.split("; "))}
        assert check_assignment(int(group), counts, letters) == (True, "ok")
    assert sum("TiO3" in line or "SrZrO3" in line for line in block) >= 2  # similar perovskite-like oxides first


def _z(symbol: str) -> int:
    from pymatgen.core import Element

    return Element(symbol).Z


def test_sampler_source_keeps_the_size_filter():
    too_big = {11: 30, 17: 30}
    assert sum(conventional_counts(225, too_big).values()) > MAX_CONVENTIONAL_ATOMS
    source = lambda *args: [{"space_group": 225, "letters": {}, "log_prob": 0.0}]  # noqa: E731
    with pytest.raises(ValueError, match=f"within {MAX_CONVENTIONAL_ATOMS} atoms"):
        UniMDMSampler(symmetry_source=source).propose_symmetry(too_big)


def test_generate_unimdm_uses_claude_symmetry(anthropic_env):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from tools.unimdm_generation import generate_unimdm, load_sampler

    load_sampler.cache_clear()
    try:
        assert load_sampler().symmetry_source is None  # no key: the offline predictor, as before
        load_sampler.cache_clear()
        server = anthropic_env(replies([candidate(221, {"Sr": ["a"], "Ti": ["b"], "O": ["c"]})]))
        made = generate_unimdm(formula="SrTiO3", band_gap=3.0, n=1)
        source = load_sampler().symmetry_source
    finally:
        load_sampler.cache_clear()
    assert isinstance(source, ClaudeSymmetrySource) and source.last.source == "claude" and server.requests
    structure = made[0].structure
    assert structure.composition.reduced_formula == "SrTiO3" and made[0].prototype == "unimdm sg 221"
    assert SpacegroupAnalyzer(structure, symprec=0.01).get_space_group_number() == 221
    assert "space group 221, Wyckoff O:c Ti:b Sr:a, band_gap 3.0" in made[0].notes[0]
