"""The planner: how the search understands a request and asks for formulae.

The offline planner is deterministic rules (``tools.spec.parse_request`` and the offline
proposer); with ``ANTHROPIC_API_KEY`` set, formulae come from Claude, with the screen's
rejection reasons fed back on re-proposal rounds, and any Claude failure falls back offline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tools.claude_proposer import claude_configured, propose
from tools.formula import FormulaError, parse_formula

from tools.proposer import Proposal, propose_offline
from tools.spec import RequestNotUnderstood, SearchSpec, SpecConflict, parse_request, spec_conflicts

log = logging.getLogger(__name__)
RETRIEVED_PASSAGES = 4


@dataclass
class Planner:
    """Decides the spec and the formulae; ``name`` says which planner runs ('offline' or 'claude')."""

    use_claude: bool = False
    use_retrieval: bool = True  # ground proposals in retrieved passages (GenMS's RAG; off for ablations)
    use_gfn: bool = True  # Crystal-GFN for open exploration under a property target (off for ablations)

    @property
    def name(self) -> str:
        return "claude" if self.use_claude else "offline"

    def understand(self, request: str, **overrides) -> SearchSpec:
        """The request as a spec (raises RequestNotUnderstood / SpecConflict with an explanation).

        Claude reads the request into the spec's schema when it is the planner; its spec is
        validated like any other and checked for conflicts. If Claude fails or is unsure
        (nothing searchable), the rule-based parser decides.
        """
        if self.use_claude:
            try:
                return _claude_spec(request, overrides)
            except (RequestNotUnderstood, SpecConflict):
                raise
            except Exception as exc:  # network, timeout, invalid structured output
                log.warning("Claude could not read the request, using the rule-based parser: %s", exc)
        return parse_request(request, **overrides)

    def retrieve(self, spec: SearchSpec) -> tuple[list[dict], str]:
        """Passages about the request (seeded articles, Wikipedia when online) and a status line."""
        if not self.use_retrieval:
            return [], "retrieval off"
        from tools.knowledge import search_knowledge

        found = search_knowledge(spec.request or spec.summary(), k=RETRIEVED_PASSAGES)
        return [p.as_dict() for p in found.passages], found.wikipedia

    def gfn_choice(self, spec: SearchSpec) -> tuple[str | None, str]:
        """Crystal-GFN's reward when the request is open exploration under a property target
        (a band gap, dense phases; no family or ratio), else None; with the reason either way."""
        if not self.use_gfn:
            return None, "Crystal-GFN off"
        from tools.gfn_generation import gfn_reward_for

        return gfn_reward_for(spec)

    def propose(self, spec: SearchSpec, n: int, seed: int, avoid: set[str], feedback: list[str],
                context: list[dict] = ()) -> tuple[list[Proposal], str]:
        """``n`` new formulae (none whose key is in ``avoid``) and which proposer made them.

        Open exploration under a property target: Crystal-GFN's sampler for that reward proposes
        (source 'gfn'; the search then places those formulae with Crystal-GFN). Otherwise Claude
        reads the retrieved ``context`` (fenced as data) and the screen's ``feedback``; the
        offline proposer works from the catalogue and substitution statistics alone.
        """
        if self.gfn_choice(spec)[0] is not None:
            from tools.generation import GenerationError
            from tools.gfn_generation import propose_gfn

            try:
                return propose_gfn(spec, n, seed=seed, avoid=avoid), "gfn"
            except GenerationError as exc:
                log.warning("Crystal-GFN could not propose, using the formula proposer: %s", exc)
        if not self.use_claude:
            return propose_offline(spec, n, seed=seed, avoid=avoid), "offline"
        proposals, proposer = propose(spec, n, seed=seed, context=list(context), use_claude=True, feedback=feedback)
        return [p for p in proposals if _key(p.formula) not in avoid], proposer


def _key(formula: str) -> str | None:
    """Composition key of a proposed formula (None for text the screen will reject anyway)."""
    try:
        return parse_formula(formula).key
    except FormulaError:
        return None


def _claude_spec(request: str, overrides: dict) -> SearchSpec:
    """Claude fills the SearchSpec schema; the result is validated and checked for conflicts."""
    from tools.claude_proposer import chat_model
    from tools.families import FAMILIES

    prompt = (
        "Read this materials request into the schema. Families: " + ", ".join(f.name for f in FAMILIES) + ". "
        "Use element symbols. Leave fields empty when the request does not say. "
        f"Request: {request}"
    )
    spec = chat_model().with_structured_output(SearchSpec).invoke(prompt)
    spec = SearchSpec(**{**spec.model_dump(exclude={"budget", "seed"}), **overrides, "request": request})
    if not any([spec.family, spec.stoichiometry, spec.required_elements, spec.allowed_elements, spec.anion_class,
                spec.band_gap, spec.electronic, spec.spacegroup]):
        return parse_request(request, **overrides)  # raises RequestNotUnderstood with the explanation
    problems = spec_conflicts(spec)
    if problems:
        raise SpecConflict("the request cannot be satisfied: " + "; ".join(problems))
    return spec


def default_planner() -> Planner:
    """Claude when a key is set, otherwise the offline planner."""
    return Planner(use_claude=claude_configured())
