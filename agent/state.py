"""The search graph's state: what the hierarchical search knows at each step.

Every node is annotated with ``SearchState``: LangGraph reads a node's input schema from that
annotation, so keys missing here would silently not reach the node. Values are plain JSON data
(CIF text, not pymatgen objects) so that a checkpointer can store them.
"""

from __future__ import annotations

import operator
import time
from typing import Annotated, TypedDict


class Decision(TypedDict):
    """One recorded decision of the search, with its reason (shown to the user, kept in results.json)."""

    step: str
    decision: str
    reason: str
    round: int
    elapsed_s: float


class SearchState(TypedDict, total=False):
    """State of one search. Lists marked with ``operator.add`` accumulate across steps."""

    request: str
    spec: dict  # SearchSpec.model_dump()
    error: str | None
    error_kind: str | None
    round: int
    started_at: float
    context: list[dict]  # retrieved passages (text, title, source, score, kind): data for the proposer
    proposals_tried: Annotated[list[str], operator.add]  # formula keys already proposed
    screened: Annotated[list[dict], operator.add]  # ScreenedFormula dicts, every round
    survivors: list[dict]  # passed the screen, best first, not yet sent to a generator
    generated_formulas: Annotated[list[str], operator.add]
    dropped: Annotated[list[dict], operator.add]  # {formula, reason}
    candidates: Annotated[list[dict], operator.add]  # best structure per formula, scored
    structures_scored: int
    decisions: Annotated[list[Decision], operator.add]
    timings: Annotated[list[dict], operator.add]  # {step, seconds}
    pending: list[dict]  # generated, not yet scored: {item, structures: [{cif, family, prototype, assignment, generator}]}
    ranked: list[dict]  # the final candidates, best first
    next_step: str


def decision(state: SearchState, step: str, verdict: str, reason: str) -> Decision:
    """A decision record stamped with the round and the time since the search began."""
    return Decision(
        step=step,
        decision=verdict,
        reason=reason,
        round=state.get("round", 0),
        elapsed_s=round(time.time() - state.get("started_at", time.time()), 2),
    )
