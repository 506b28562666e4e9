"""The planner: how the search understands a request and asks for formulae.

The offline planner is deterministic rules (``tools.spec.parse_request`` and the offline
proposer); with ``ANTHROPIC_API_KEY`` set, formulae come from Claude, with the screen's
rejection reasons fed back on re-proposal rounds, and any Claude failure falls back offline.
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.claude_proposer import claude_configured, propose
from tools.proposer import Proposal, propose_offline
from tools.spec import SearchSpec, parse_request


@dataclass
class Planner:
    """Decides the spec and the formulae; ``name`` says which planner runs ('offline' or 'claude')."""

    use_claude: bool = False

    @property
    def name(self) -> str:
        return "claude" if self.use_claude else "offline"

    def understand(self, request: str, **overrides) -> SearchSpec:
        """The request as a spec (raises RequestNotUnderstood / SpecConflict with an explanation)."""
        return parse_request(request, **overrides)

    def propose(self, spec: SearchSpec, n: int, seed: int, avoid: set[str], feedback: list[str]) -> tuple[list[Proposal], str]:
        """``n`` new formulae (none whose key is in ``avoid``) and which proposer made them."""
        if not self.use_claude:
            return propose_offline(spec, n, seed=seed, avoid=avoid), "offline"
        context = [f"Earlier proposals were rejected: {'; '.join(feedback)}"] if feedback else []
        proposals, proposer = propose(spec, n, seed=seed, context=context, use_claude=True)
        return [p for p in proposals if p.formula not in avoid], proposer


def default_planner() -> Planner:
    """Claude when a key is set, otherwise the offline planner."""
    return Planner(use_claude=claude_configured())
