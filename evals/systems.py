"""The systems a suite compares, and how one unit of each task runs.

- ``genms``: the hierarchical search (``agent.search.run_search``) with the suite's budget;
  Claude plans when ``ANTHROPIC_API_KEY`` is set, the offline planner otherwise.
- ``generator``: one structure generator without search (GenMS's baselines: random symmetric
  structures from pyxtal, prototype substitution, or a learned generator) for the same
  formulae the search proposes in its first round, one structure each, scored and relaxed
  with the same budget. Generators are looked up in ``tools.generation.GENERATORS`` when the
  unit runs; one that is not registered makes the unit *skipped*, with the reason.
- ``llm_cif``: GenMS's LLM baseline, Claude writes CIFs directly given few-shot MP CIFs of
  the family; skipped with a message when no key is set.
- ``gfn``: the Crystal-GFN sampler through the figures of ``evals.bench_gfn``.

Every runner returns a JSON-ready record: ``status`` (``ok``, ``skipped``, ``error``),
``reason``, ``seconds`` and the items metrics read (``samples``, ``proposals``, ``pairs``).
"""

from __future__ import annotations

import os
import random
import time

from evals.metrics import annotate


class Skipped(Exception):
    """A unit that cannot run here (a missing generator, weights or API key); the message says why."""


# ---------------------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _planner(system: dict):
    from agent.planner import Planner
    from tools.claude import claude_configured

    return Planner(use_claude=claude_configured() and system["options"].get("claude", True), use_retrieval=system["retrieval"])


def _overrides(unit: dict) -> dict:
    budget = unit["budget"]
    system = unit["system"]
    return {
        **({"generator": system["generator"]} if system["kind"] == "genms" and system.get("generator") else {}),
        **unit["case"]["overrides"],
        "seed": unit["seed"],
        "n_results": budget["formulas"],
        "budget": {k: budget[k] for k in ("proposals", "formulas", "structures_per_formula", "rounds", "relax_steps", "seconds")},
    }


def generator_unavailable(name: str) -> str | None:
    """Why a generator cannot run here (not registered, or its ``tools.<name>_generation`` module
    says its weights are missing), or None."""
    import importlib

    from tools.generation import GENERATORS

    if name not in GENERATORS:
        return f"generator {name!r} is not registered in tools.generation.GENERATORS (available: {', '.join(GENERATORS)})"
    try:
        module = importlib.import_module(f"tools.{name}_generation")
    except ImportError:
        return None
    check = getattr(module, "weights_available", None)
    if check is not None and not check():
        return f"generator {name!r} has no trained weights yet ({module.__name__}.weights_available() is false)"
    return None


def _generator(name: str):
    from tools.generation import GENERATORS

    reason = generator_unavailable(name)
    if reason:
        raise Skipped(reason)
    return GENERATORS[name]


def _primitive(structure):
    primitive = structure.get_primitive_structure()
    return primitive if len(primitive) < len(structure) else structure


def score_and_relax(structures: list, relax_steps: int) -> list[dict]:
    """CHGNet score of each structure, then (``relax_steps`` > 0) the plausible ones relaxed, as
    the search's R_lo does: a relaxation that breaks the structure keeps the static score.

    Returns per structure ``cif`` (relaxed when kept), ``formation_energy_per_atom``,
    ``e_above_hull``, ``plausible``, ``reason``, ``relaxed``.
    """
    from tools.scoring import score_structures
    from tools.structure import write_cif

    reports = score_structures(structures)
    samples = []
    for structure, report in zip(structures, reports):
        sample = {"cif": write_cif(structure), "relaxed": False}
        final = report
        if relax_steps and report["plausible"]:
            relaxed = score_structures([structure], relax=True, max_steps=relax_steps, fmax=0.1)[0]
            if relaxed["plausible"]:
                final, sample = relaxed, {"cif": relaxed["relaxed_cif"], "relaxed": True}
        sample.update({k: final[k] for k in ("formation_energy_per_atom", "e_above_hull", "plausible", "reason")})
        samples.append(sample)
    return samples


# ---------------------------------------------------------------------------- task: search


def first_round_formulas(unit: dict) -> tuple[object, list[str], list[dict]]:
    """The spec, the W formulae the search would generate first, and every screened proposal
    (the same understand -> retrieve -> propose -> screen steps as the search's first round)."""
    from tools.screen import screen

    planner = _planner(unit["system"] | {"retrieval": True})
    spec = planner.understand(unit["case"]["request"], **_overrides(unit))
    context, _ = planner.retrieve(spec)
    proposals, _ = planner.propose(spec, spec.budget.proposals, seed=spec.seed, avoid=set(), tried=[], context=context)
    screened = [s.as_dict() for s in screen(proposals, spec)]
    passed, seen = [], set()
    for item in sorted((s for s in screened if s["passed"]), key=lambda s: -s["score"]):
        if item["reduced_formula"] not in seen:
            seen.add(item["reduced_formula"])
            passed.append(item["formula"])
    return spec, passed[: spec.budget.formulas], screened


def _proposals(screened: list[dict]) -> list[dict]:
    return [{"formula": s["formula"], "passed": s["passed"], "rejected_by": s["rejected_by"]} for s in screened]


def run_genms_search(unit: dict) -> dict:
    from agent.search import run_search

    result = run_search(unit["case"]["request"], _overrides(unit), _planner(unit["system"]))
    if result.error:
        return {"status": "error", "reason": result.error, "samples": [], "proposals": [], "seconds": result.seconds}
    returned = {id(c) for c in result.good}
    samples = [
        {"formula": c["formula"], "cif": c["cif"], "generator": c["generator"], "family": c["family"],
         "prototype": c["prototype"], "formation_energy_per_atom": c["formation_energy_per_atom"],
         "e_above_hull": c["e_above_hull"], "plausible": c["plausible"], "relaxed": c["relaxed"],
         "returned": id(c) in returned}  # what the search answers with (good: plausible, under the hull cut)
        for c in result.candidates
    ]
    return {"status": "ok", "planner": result.planner, "steps": result.steps, "claude": result.claude, "samples": samples,
            "proposals": _proposals(result.screened), "dropped": result.dropped, "seconds": result.seconds}


def run_generator_search(unit: dict) -> dict:
    """A generator alone: one structure for each formula the search's first round would generate."""
    from tools.generation import GenerationError

    generate = _generator(unit["system"]["generator"])
    started = time.time()
    spec, formulas, screened = first_round_formulas(unit)
    structures, names, dropped = [], [], []
    for formula in formulas:
        try:
            generated = generate(formula, family=spec.family, n=1, seed=unit["seed"])
        except GenerationError as exc:
            dropped.append({"formula": formula, "reason": str(exc)})
            continue
        structures.append(_primitive(generated[0].structure))
        names.append(formula)
    samples = [{"formula": name, "generator": unit["system"]["generator"], **s}
               for name, s in zip(names, score_and_relax(structures, unit["budget"]["relax_steps"]))]
    return {"status": "ok", "samples": samples, "proposals": _proposals(screened), "dropped": dropped,
            "seconds": time.time() - started}


def llm_prompt(request: str, family_title: str, examples: list[str], n: int) -> tuple[str, str]:
    """GenMS's few-shot CIF prompt (Appendix A.2): (example CIFs of the family, the request and the ask).

    The examples come first so that they are the cached prefix across a suite's cases."""
    lines = [f"Below are {len(examples)} CIF files of {family_title} crystals from the Materials Project."]
    for index, cif in enumerate(examples, start=1):
        lines += [f"<cif_example index=\"{index}\">", cif.strip(), "</cif_example>"]
    ask = [f"Request: {request}",
           f"Write {n} CIF files of new crystals that satisfy the request: complete CIFs (cell lengths and angles, "
           "symmetry P1 or a space group, atom sites with fractional coordinates) that pymatgen can parse."]
    return "\n".join(lines), "\n".join(ask)


def run_llm_cif(unit: dict) -> dict:
    """GenMS's LLM baseline: Claude writes CIFs directly, few-shot; skipped without a key."""
    from pydantic import BaseModel, Field

    from tools.claude import ClaudeError, ClaudeSession, claude_configured
    from tools.families import get_family, reference_entries
    from tools.formula import FormulaError, parse_formula
    from tools.structure import StructureError, read_cif, structural_validity, write_cif

    if not claude_configured():
        raise Skipped("ANTHROPIC_API_KEY is not set: the LLM baseline (Claude writes CIFs, few-shot) needs it")
    family = unit["case"].get("family")
    if not family:
        raise Skipped("the LLM baseline needs the case's family for its few-shot CIFs")

    class GeneratedCIF(BaseModel):
        formula: str = Field(description="chemical formula of the crystal")
        cif: str = Field(description="the complete CIF file")

    class GeneratedCIFs(BaseModel):
        """CIF files of new crystals."""

        structures: list[GeneratedCIF]

    budget, started = unit["budget"], time.time()
    references = list(reference_entries(get_family(family).name))
    random.Random(unit["seed"]).shuffle(references)
    examples = [write_cif(entry.structure) for entry in references[: budget["shots"]]]
    shots, ask = llm_prompt(unit["case"]["request"], get_family(family).title, examples, budget["samples"])
    session = ClaudeSession()
    try:  # each whole CIF is up to about 1,500 tokens
        answer = session.ask(GeneratedCIFs, purpose="llm_cif", system=[shots], prompt=[ask],
                             answer_tokens=512 + 1500 * budget["samples"])
    except ClaudeError as exc:
        return {"status": "error", "reason": f"Claude failed: {exc.kind}: {exc}", "samples": [], "proposals": [],
                "claude": session.as_dict(), "seconds": time.time() - started}
    samples, parsed = [], []
    for item in answer.structures[: budget["samples"]]:
        sample = {"formula": item.formula, "cif": item.cif, "generator": "llm_cif", "formation_energy_per_atom": None,
                  "e_above_hull": None, "plausible": False}
        try:
            structure = read_cif(item.cif)
            sample["formula"] = structure.composition.reduced_formula
            if structural_validity(structure).valid:
                parsed.append((len(samples), structure))
        except StructureError:
            try:
                sample["formula"] = parse_formula(item.formula).reduced_formula
            except FormulaError:
                pass
        samples.append(sample)
    scored = score_and_relax([s for _, s in parsed], budget["relax_steps"])
    for (index, _), score in zip(parsed, scored):
        samples[index].update({k: v for k, v in score.items() if k != "cif"})
    return {"status": "ok", "planner": "claude", "claude": session.as_dict(), "samples": samples, "proposals": [],
            "seconds": time.time() - started}


# ---------------------------------------------------------------------------- task: propose


def run_propose(unit: dict) -> dict:
    """The proposer alone (GenMS Table 3): H formulae for the request."""
    planner = _planner(unit["system"])
    started = time.time()
    spec = planner.understand(unit["case"]["request"], **_overrides(unit))
    context, _ = planner.retrieve(spec)
    proposals, proposer = planner.propose(spec, spec.budget.proposals, seed=spec.seed, avoid=set(), tried=[], context=context)
    return {"status": "ok", "proposer": proposer, **planner.record(),
            "proposals": [{"formula": p.formula, "source": p.source} for p in proposals], "seconds": time.time() - started}


# ---------------------------------------------------------------------------- task: best_of_n


def run_best_of_n(unit: dict) -> dict:
    """N structures of one composition, scored by CHGNet: the best of N against the first (GenMS Figure 4)."""
    from tools.generation import GenerationError

    generate = _generator(unit["system"]["generator"])
    started = time.time()
    case, n = unit["case"], unit["budget"]["samples"]
    try:
        generated = generate(case["formula"], family=case.get("family"), n=n, seed=unit["seed"])
    except GenerationError as exc:
        return {"status": "error", "reason": str(exc), "samples": [], "energies": [], "seconds": time.time() - started}
    samples = score_and_relax([_primitive(g.structure) for g in generated], unit["budget"]["relax_steps"])
    for sample in samples:
        sample["formula"] = case["formula"]
    # every CHGNet energy counts, also those the plausibility guard flags (a single sample far
    # above the known range is a bad sample, which is what best-of-N is measured against)
    energies = [s["formation_energy_per_atom"] for s in samples]
    return {"status": "ok", "samples": samples, "energies": energies, "seconds": time.time() - started}


# ---------------------------------------------------------------------------- task: csp


def run_csp(unit: dict) -> dict:
    """MP-20 test CSP: atom types of the first ``limit`` test crystals given, one structure each."""
    from pymatgen.core import Structure

    from generators.datasets import load_mp20

    name, options = unit["system"]["generator"], unit["case"]["options"]
    limit, offset = int(options.get("limit", 20)), int(options.get("offset", 0))
    started = time.time()
    table = load_mp20("test").iloc[offset : offset + limit]
    truths = [Structure.from_str(cif, fmt="cif") for cif in table["cif"]]
    if name == "diffusion":  # the benchmark's own path: sample the exact cells (atom types and count)
        from generators.diffusion.diffusion import SamplerSettings
        from generators.diffusion.sampler import DiffusionSampler

        try:
            sampler = DiffusionSampler.load(options.get("weights"), threads=1)
        except FileNotFoundError as exc:
            raise Skipped(str(exc)) from None
        settings = SamplerSettings.for_method(options.get("method", "fast"), sampler.model.schedule.config.timesteps, options.get("steps"))
        predictions = sampler.sample_cells([[site.specie.Z for site in t] for t in truths], settings, seed=unit["seed"])
    else:
        from tools.generation import GenerationError

        generate = _generator(name)
        predictions = []
        for truth in truths:
            try:
                predictions.append(generate(truth.composition.formula.replace(" ", ""), n=1, seed=unit["seed"])[0].structure)
            except GenerationError:
                predictions.append(None)
    from evals.bench_csp_diffusion import evaluate_structure, summarise

    pairs = []
    for material_id, prediction, cif in zip(table["material_id"], predictions, table["cif"]):
        pair = evaluate_structure(prediction, cif)
        pairs.append({"material_id": material_id, **pair, "rms": None if pair["rms"] is None else round(pair["rms"], 6)})

    return {"status": "ok", "pairs": pairs, "summary": summarise(pairs), "seconds": time.time() - started}


# ---------------------------------------------------------------------------- task: gfn


def run_gfn(unit: dict) -> dict:
    """Crystal-GFN figures (``evals.bench_gfn.evaluate``) for one model and optional restriction."""
    import numpy as np

    from evals.bench_gfn import evaluate

    options = {**unit["system"]["options"], **unit["case"]["options"]}
    try:
        from generators.gfn.gfn import GFNSampler
        from generators.gfn.proxy import Proxy

        proxy = Proxy.load("formation_energy")
        trained = GFNSampler.load(options.get("weights"))
    except (FileNotFoundError, ImportError) as exc:
        raise Skipped(f"Crystal-GFN unavailable: {exc}") from None
    model, n, seed = options.get("model", "trained"), unit["budget"]["samples"], unit["seed"]
    restriction = options.get("restriction") or {}
    if restriction.get("space_groups") == "cubic":  # the paper's restriction C
        restriction = {**restriction, "space_groups": [g for g in trained.env.config.space_groups if g >= 195]}
    if "lattice_ranges" in restriction:
        restriction = {**restriction, "lattice_ranges": {k: tuple(v) for k, v in restriction["lattice_ranges"].items()}}
    started = time.time()
    if model == "uniform":
        crystals = trained.env.sample_random(n, np.random.default_rng(seed))
        sampler = trained
    else:
        sampler = trained if model == "trained" else GFNSampler.untrained(trained.env.config, seed=seed)
        crystals = sampler.sample_crystals(n, seed=seed, **restriction)
    figures = evaluate(sampler, proxy, crystals, time.time() - started)
    return {"status": "ok", "figures": figures, "seconds": time.time() - started}


# ---------------------------------------------------------------------------- dispatch


def runner_for(unit: dict):
    task, kind = unit["task"], unit["system"]["kind"]
    if task == "search":
        return {"genms": run_genms_search, "generator": run_generator_search, "llm_cif": run_llm_cif}[kind]
    return {"propose": run_propose, "best_of_n": run_best_of_n, "csp": run_csp, "gfn": run_gfn}[task]


def run_unit(unit: dict) -> dict:
    """Run one unit (in this process); never raises: failures become ``error`` records."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _seed_everything(unit["seed"])
    started = time.time()
    try:
        record = runner_for(unit)(unit)
    except Skipped as exc:
        record = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # one broken unit must not stop a suite
        record = {"status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:500]}"}
    record.setdefault("seconds", time.time() - started)
    record["seconds"] = round(record["seconds"], 2)
    if record["status"] == "ok":
        annotate(record, unit["case"], unit["metrics"])
    return {"key": unit["key"], "case": unit["case"]["id"], "system": unit["system"]["name"], "variant": unit["variant"],
            "repeat": unit["repeat"], "seed": unit["seed"], **record}
