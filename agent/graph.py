"""The hierarchical search as a LangGraph (GenMS Algorithm 1, made dynamic).

understand -> retrieve -> propose -> screen -> (enough survivors? else propose again with feedback)
-> generate -> score -> (enough good candidates? else generate the next formulae, or propose
again) -> report. Every branch taken is recorded as a decision with its reason. Long steps
report progress through LangGraph's custom stream (``stream_mode="custom"``).
"""

from __future__ import annotations

import time
from collections import Counter
from functools import partial

from langgraph.config import get_config, get_stream_writer
from langgraph.graph import END, START, StateGraph

from agent.planner import Planner, default_planner
from agent.state import SearchState, decision
from tools.checks import check_structure_text
from tools.formula import parse_formula
from tools.generation import GenerationError, generate_any, generate_with
from tools.scoring import score_structures
from tools.screen import screen
from tools.spec import RequestNotUnderstood, SearchSpec, SpecConflict
from tools.structure import read_cif, write_cif


def _spec(state: SearchState) -> SearchSpec:
    return SearchSpec(**state["spec"])


class SearchStopped(RuntimeError):
    """Raised inside a step at its next progress point once the caller's stop event is set."""


def _progress(stage: str, done: int, total: int, detail: str = "") -> None:
    """Report progress, and stop the step here when the caller asked (``configurable["stop"]``)."""
    try:
        get_stream_writer()({"stage": stage, "done": done, "total": total, "detail": detail})
        stop = get_config().get("configurable", {}).get("stop")
    except RuntimeError:  # not running inside a streamed graph
        return
    if stop is not None and stop.is_set():
        raise SearchStopped("search stopped by the caller")


def _out_of_time(state: SearchState) -> bool:
    return time.time() - state["started_at"] > _spec(state).budget.seconds


def understand(state: SearchState, planner: Planner) -> dict:
    """Read the request into a spec, or stop with the reason it cannot be searched."""
    try:
        spec = planner.understand(state["request"], **state.get("spec", {}))
    except (RequestNotUnderstood, SpecConflict) as exc:
        return {"error": str(exc), "error_kind": type(exc).__name__, "decisions": [decision(state, "understand", "stop", str(exc))]}
    return {
        "spec": spec.model_dump(),
        "error": None,
        "round": 0,
        "decisions": [decision(state, "understand", "search", f"understood as: {spec.summary()} (read by: {planner.steps['understand']})")],
    }


def tried_formulas(screened: list[dict]) -> list[str]:
    """Each formula screened so far with its verdict, for the proposer's next round."""
    return [f"{s['formula']}: passed" if s["passed"] else f"{s['formula']}: rejected by {s['rejected_by']} ({str(s.get('reason') or '')[:120]})"
            for s in screened]


def retrieve(state: SearchState, planner: Planner) -> dict:
    """Look the request up (seeded articles, Wikipedia when online) to ground the proposer."""
    started = time.time()
    _progress("retrieve", 0, 1, "knowledge")
    try:
        passages, status = planner.retrieve(_spec(state))
    except Exception as exc:  # a broken store must not stop the search: propose without context
        passages, status = [], f"retrieval failed ({type(exc).__name__}: {str(exc)[:120]})"
    _progress("retrieve", 1, 1, "knowledge")
    titles = "; ".join(dict.fromkeys(p["title"] for p in passages)) or "none"
    return {
        "context": passages,
        "decisions": [decision(state, "retrieve", "ground" if passages else "skip", f"{len(passages)} passages ({titles}); {status}")],
        "timings": [{"step": "retrieve", "seconds": round(time.time() - started, 2)}],
    }


def propose(state: SearchState, planner: Planner) -> dict:
    """Ask the planner for H new formulae (feedback from earlier rejections on later rounds)."""
    spec = _spec(state)
    started, round_number = time.time(), state.get("round", 0) + 1
    _progress("propose", 0, 1, f"round {round_number}")
    proposals, proposer = planner.propose(
        spec, spec.budget.proposals, seed=spec.seed + round_number - 1, avoid=set(state.get("proposals_tried", [])),
        tried=tried_formulas(state.get("screened", [])), context=state.get("context", []),
    )
    screened = [s.as_dict() for s in screen(proposals, spec)]
    keys = [parse_formula(s["formula"]).key for s in screened if s["reduced_formula"]]
    known = {s["reduced_formula"] for s in state.get("survivors", [])} | set(state.get("generated_formulas", []))
    survivors = state.get("survivors", []) + [s for s in screened if s["passed"] and s["reduced_formula"] not in known]
    survivors.sort(key=lambda s: -s["score"])
    passed = sum(s["passed"] for s in screened)
    reasons = Counter(s["rejected_by"] for s in screened if not s["passed"])
    why = ", ".join(f"{check} {count}" for check, count in reasons.most_common()) or "none rejected"
    planned = []
    if proposer == "gfn" and round_number == 1:  # the planner picked Crystal-GFN: say why, once
        planned = [decision({**state, "round": round_number}, "plan", "gfn", planner.gfn_choice(spec)[1]
                            + "; its formulae get Crystal-GFN structures (pyxtal placement, CHGNet relaxation)")]
    return {
        "round": round_number,
        "proposals_tried": keys,
        "screened": screened,
        "survivors": survivors,
        "decisions": planned + [decision({**state, "round": round_number}, "screen", "pruned",
                                         f"{proposer} proposer: {len(screened)} formulae, {passed} passed R_hi (rejected: {why})")],
        "timings": [{"step": f"propose+screen round {round_number}", "seconds": round(time.time() - started, 2)}],
    }


def after_screen(state: SearchState) -> str:
    """Enough survivors for W formulae? Otherwise propose again while rounds and time last."""
    spec = _spec(state)
    if state.get("error"):
        return END
    if state["survivors"]:
        return "generate"
    return "propose" if state["round"] < spec.budget.rounds and not _out_of_time(state) else "report"


def _primitive(structure):
    primitive = structure.get_primitive_structure()
    return primitive if len(primitive) < len(structure) else structure


def learned_generator(spec: SearchSpec) -> tuple[str, str]:
    """The learned generator for the proposed formulae, with the reason: Uni-MDM when asked for,
    or ('auto') when the request carries a band-gap target and its weights exist (the
    property-conditioned model); GenMS's diffusion model otherwise."""
    if spec.generator == "unimdm":
        return "unimdm", "Uni-MDM asked for"
    if spec.generator == "auto" and spec.band_gap is not None:
        from tools.unimdm_generation import weights_available

        if weights_available():
            return "unimdm", f"Uni-MDM: the request carries a band-gap target ({spec.band_gap:g} eV)"
    return "diffusion", "GenMS diffusion"


def _sample_learned(name: str, formula: str, spec: SearchSpec, n: int):
    if name == "unimdm":
        from tools.unimdm_generation import generate_unimdm

        return generate_unimdm(formula=formula, band_gap=spec.band_gap, space_group=spec.spacegroup, family=spec.family,
                               n=n, seed=spec.seed)
    return generate_with(name, formula, family=spec.family, n=n, seed=spec.seed)


def _generate_for(item: dict, spec: SearchSpec):
    """Crystal-GFN for the formulae it proposed (prototypes / pyxtal if it cannot place one);
    otherwise the learned generator's samples (:func:`learned_generator`: GenMS's diffusion
    model, pi_lo, or Uni-MDM under a band-gap target), joined by the family's prototypes when
    the request names a family the formula fits (``spec.generator`` 'auto'), or prototype
    substitution alone ('template'), with the random symmetric fallback."""
    n = spec.budget.structures_per_formula
    if item.get("source") == "gfn":
        try:
            return generate_with("gfn", item["formula"], family=spec.family, n=n, seed=spec.seed), None
        except GenerationError as exc:
            structures, fallback = generate_any(item["formula"], family=spec.family, n=n, seed=spec.seed)
            return structures, f"Crystal-GFN could not place it ({exc}); " + (fallback or "prototypes")
    if spec.generator == "template":
        return generate_any(item["formula"], family=spec.family, n=n, seed=spec.seed)
    name = learned_generator(spec)[0]
    try:
        structures = _sample_learned(name, item["formula"], spec, n)
    except GenerationError as exc:
        structures, fallback = generate_any(item["formula"], family=spec.family, n=n, seed=spec.seed)
        return structures, f"{name} could not sample it ({exc}); " + (fallback or "prototype substitution")
    if spec.generator == "auto" and spec.family:
        try:  # both branches go to R_lo, which keeps the lowest-energy plausible structure
            structures += generate_with("template", item["formula"], family=spec.family, n=n, seed=spec.seed)
        except GenerationError:
            pass  # the formula fits none of the family's prototypes: learned samples only
    return structures, None


def _generator_counts(batches: list[dict]) -> str:
    counts = Counter(g["generator"] for batch in batches for g in batch["structures"])
    return " (" + ", ".join(f"{name} {count}" for name, count in counts.most_common()) + ")" if counts else ""


def generate(state: SearchState) -> dict:
    """L structures (more with a family's prototypes) for each of the next W survivors; formulae
    that cannot be placed are dropped."""
    spec = _spec(state)
    started = time.time()
    chosen, rest = state["survivors"][: spec.budget.formulas], state["survivors"][spec.budget.formulas :]
    batches, dropped, fallbacks = [], [], []
    for index, item in enumerate(chosen):
        _progress("generate", index, len(chosen), item["formula"])
        try:
            structures, fallback = _generate_for(item, spec)
        except GenerationError as exc:
            dropped.append({"formula": item["formula"], "reason": f"no generator could place it: {exc}"})
            continue
        if fallback:
            fallbacks.append(f"{item['formula']}: {fallback}")
        batches.append({
            "item": item,
            "structures": [
                {"cif": write_cif(_primitive(g.structure)), "family": g.family, "prototype": g.prototype,
                 "assignment": g.assignment, "generator": g.generator}
                for g in structures
            ],
        })
    _progress("generate", len(chosen), len(chosen))
    return {
        "survivors": rest,
        "generated_formulas": [item["reduced_formula"] for item in chosen],
        "dropped": dropped,
        "pending": batches,
        "decisions": [decision(state, "generate", "branch",
                               f"{len(batches)} formulae x {spec.budget.structures_per_formula} structures"
                               + _generator_counts(batches)
                               + (f"; {learned_generator(spec)[1]}" if spec.generator != "template" else "")
                               + (f"; switched generator for {len(fallbacks)}: " + "; ".join(fallbacks) if fallbacks else "")
                               + (f"; dropped {len(dropped)}: " + "; ".join(d['reason'] for d in dropped) if dropped else ""))],
        "timings": [{"step": "generate", "seconds": round(time.time() - started, 2)}],
    }


def _candidate(item: dict, generated: dict, report: dict, relaxed: dict | None) -> dict:
    final = relaxed or report
    cif = final.get("relaxed_cif") or report["cif"]
    checks = check_structure_text(cif, "candidate.cif")
    density = read_cif(cif).density if checks["cif_valid"] else None
    return {
        "formula": parse_formula(item["reduced_formula"]).plain_formula,
        "reduced_formula": item["reduced_formula"],
        "rationale": item["rationale"],
        "sites": item.get("sites"),  # the family's site assignment and why each ion fits
        "screen_score": item["score"],
        "oxidation_states": item["oxidation_states"],
        "known_in": item["known_in"],
        "generator": generated["generator"],
        "family": generated["family"],
        "prototype": generated["prototype"],
        "assignment": generated["assignment"],
        "family_reference": generated.get("family_reference"),
        "energy_per_atom": final["energy_per_atom"],
        "formation_energy_per_atom": final["formation_energy_per_atom"],
        "e_above_hull": final["e_above_hull"],
        "decomposition": final["decomposition"],
        "max_force": final["max_force"],
        "density": round(float(density), 3) if density is not None else None,  # g/cm^3
        "plausible": final["plausible"],
        "reason": final["reason"],
        "relaxed": relaxed is not None,
        "relax_converged": final.get("relax_converged"),
        "rmsd": final.get("rmsd"),
        "checks": {k: checks[k] for k in ("cif_valid", "structurally_valid", "composition_valid", "charge_balanced",
                                         "spacegroup_number", "spacegroup_symbol", "n_sites", "min_distance")},
        "cif": cif,
    }


FAMILY_CHECK_REFERENCES = 40  # references tried per structure (own space group first), to keep R_lo fast


def _family_reference(structure, family: str | None) -> str | None:
    """The MP reference of the requested family the structure matches, if any (None without a family)."""
    if not family:
        return None
    from tools.matching import matching_reference

    return matching_reference(structure, family, limit=FAMILY_CHECK_REFERENCES)


def _best_of(options: list[tuple], family: str | None) -> tuple:
    """The lowest-energy (item, generated, report, structure) of one formula that belongs to the
    requested family, else the lowest-energy one: members are looked for in energy order and the
    first found wins, so most structures are never matched against the references."""
    options = sorted(options, key=lambda option: option[2]["formation_energy_per_atom"])
    for option in options if family else ():
        reference = _family_reference(option[3], family)
        if reference:
            option[1]["family_reference"] = reference
            return option
    options[0][1]["family_reference"] = None
    return options[0]


def score(state: SearchState) -> dict:
    """R_lo: score every structure, keep each formula's best plausible one, relax it.

    Best = lowest formation energy; when the request names a family, a structure of that
    family (``fit_anonymous`` to one of its MP references) comes before any that is not, so
    a diffusion sample wins over the prototypes only by being a lower-energy member of it.
    """
    spec = _spec(state)
    started = time.time()
    batches = state.get("pending", [])
    flat = [(batch["item"], generated, read_cif(generated["cif"])) for batch in batches for generated in batch["structures"]]
    reports = score_structures([s for _, _, s in flat], progress=lambda stage, done, total: _progress("score", done, total))
    plausible: dict[str, list[tuple]] = {}
    for (item, generated, structure), report in zip(flat, reports):
        report["cif"] = generated["cif"]
        if report["plausible"] and report["formation_energy_per_atom"] is not None:
            plausible.setdefault(item["reduced_formula"], []).append((item, generated, report, structure))
    best = {formula: _best_of(options, spec.family) for formula, options in plausible.items()}
    dropped = [
        {"formula": item["formula"], "reason": "no plausible structure among the generated ones"}
        for batch in batches if (item := batch["item"])["reduced_formula"] not in best
    ]
    candidates = []
    chosen = list(best.values())
    steps = spec.budget.relax_steps
    # every chosen structure relaxed in one batch (tools.batch_relax), each stopping on its own
    relaxed_all = score_structures([structure for *_, structure in chosen], relax=True, max_steps=steps, fmax=0.1,
                                   progress=lambda stage, done, total: _progress(stage, done, total)) if steps and chosen else []
    for index, (item, generated, report, structure) in enumerate(chosen):
        relaxed = relaxed_all[index] if relaxed_all else None
        if relaxed is not None and not relaxed["plausible"]:
            relaxed = None  # keep the static score when relaxation breaks the structure
        candidates.append(_candidate(item, generated, report, relaxed))
    _progress("relax", len(chosen), len(chosen))
    return {
        "pending": [],
        "candidates": candidates,
        "dropped": dropped,
        "structures_scored": state.get("structures_scored", 0) + len(flat),
        "decisions": [decision(state, "score", "pruned",
                               f"{len(flat)} structures scored with CHGNet; kept the lowest-energy plausible one for "
                               f"{len(candidates)} formulae" + (f", relaxed ({steps} steps max)" if steps else "")
                               + (f"; dropped {len(dropped)} formulae with nothing plausible" if dropped else ""))],
        "timings": [{"step": "score+relax", "seconds": round(time.time() - started, 2)}],
    }


# eV/atom: further above the MP hull than this, a structure is no plausible stable crystal.
MAX_E_ABOVE_HULL = 1.0


def good_candidates(candidates: list[dict], max_e_above_hull: float | None = None) -> list[dict]:
    """Candidates that pass every verdict: plausible, CIF- and structurally valid, charge
    balanced, and within ``MAX_E_ABOVE_HULL`` of the hull (when the hull is known).

    ``max_e_above_hull`` is the request's own stability cut (``SearchSpec.max_e_above_hull``: 'stable'
    0.05, 'metastable' 0.1 eV/atom): with it, a candidate must lie at or below that cut, and one
    whose hull is unknown is not good (its stability cannot be told). Candidates above the cut stay
    in the results, ranked after the good ones; they are only not counted as good.
    """
    return [
        c for c in candidates
        if c["plausible"] and c["checks"]["cif_valid"] and c["checks"]["structurally_valid"]
        and c["checks"]["charge_balanced"] is not False and _within_hull(c["e_above_hull"], max_e_above_hull)
    ]


def _within_hull(e_above_hull: float | None, cut: float | None) -> bool:
    if cut is None:
        return e_above_hull is None or e_above_hull <= MAX_E_ABOVE_HULL
    return e_above_hull is not None and e_above_hull <= min(cut, MAX_E_ABOVE_HULL)


def after_score(state: SearchState) -> str:
    """Stop when enough good candidates exist or the budget is spent; else widen the search."""
    spec = _spec(state)
    good = len(good_candidates(state.get("candidates", []), spec.max_e_above_hull))
    if good >= spec.n_results or _out_of_time(state):
        return "report"
    if state.get("survivors"):
        return "generate"
    return "propose" if state["round"] < spec.budget.rounds else "report"


def _stop_reason(state: SearchState) -> str:
    spec = _spec(state)
    good = len(good_candidates(state.get("candidates", []), spec.max_e_above_hull))
    if good >= spec.n_results:
        return f"{good} good candidates reached the {spec.n_results} requested"
    if _out_of_time(state):
        return f"time budget of {spec.budget.seconds:g} s spent with {good} good candidates"
    return f"proposal rounds exhausted ({state.get('round', 0)} of {spec.budget.rounds}) with {good} good candidates"


def rank_key(spec: SearchSpec):
    """Good first; then the requested crystal system, closeness to a requested density (g/cm^3),
    energy above hull, formation energy."""
    from tools.spec import CRYSTAL_SYSTEMS

    wanted = CRYSTAL_SYSTEMS.get(spec.crystal_system or "")
    if spec.crystal_system == "hexagonal":  # the hexagonal crystal family holds the trigonal groups too
        wanted = range(143, 195)

    def key(c: dict) -> tuple:
        density_miss = abs(c["density"] - spec.density) if spec.density is not None and c.get("density") else 0.0
        hull = c["e_above_hull"] if c["e_above_hull"] is not None else 9.0
        other_system = wanted is not None and (c["checks"].get("spacegroup_number") or 0) not in wanted
        return (c not in good_candidates([c], spec.max_e_above_hull), other_system, round(density_miss, 1), hull,
                c["formation_energy_per_atom"])
    return key


def report(state: SearchState) -> dict:
    """Rank candidates (good first; density target if asked; energy above hull; E_f) and close the search."""
    ranked = sorted(state.get("candidates", []), key=rank_key(_spec(state)))
    return {
        "candidates": [],  # accumulated already; the ranked view is computed by results()
        "decisions": [decision(state, "report", "stop", _stop_reason(state))],
        "next_step": "done",
        "ranked": ranked,
    }


def build_graph(planner: Planner | None = None, checkpointer=None):
    """Compile the search graph (optionally with a checkpointer, for resumable chat threads)."""
    planner = planner or default_planner()
    graph = StateGraph(SearchState)
    graph.add_node("understand", partial(understand, planner=planner))
    graph.add_node("retrieve", partial(retrieve, planner=planner))
    graph.add_node("propose", partial(propose, planner=planner))
    graph.add_node("generate", generate)
    graph.add_node("score", score)
    graph.add_node("report", report)
    graph.add_edge(START, "understand")
    graph.add_conditional_edges("understand", lambda s: END if s.get("error") else "retrieve", ["retrieve", END])
    graph.add_edge("retrieve", "propose")
    graph.add_conditional_edges("propose", after_screen, ["propose", "generate", "report", END])
    graph.add_edge("generate", "score")
    graph.add_conditional_edges("score", after_score, ["propose", "generate", "report"])
    graph.add_edge("report", END)
    return graph.compile(checkpointer=checkpointer)
