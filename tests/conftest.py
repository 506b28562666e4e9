"""Shared fixtures: hand-built crystals (from crystallographic facts, not data rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

EXAMPLES = Path(__file__).resolve().parents[1] / "evals" / "examples"


@pytest.fixture
def srtio3() -> Structure:
    """Cubic SrTiO3 perovskite, a = 3.905 Å."""
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])


@pytest.fixture
def rocksalt_nacl() -> Structure:
    """Rocksalt NaCl, a = 5.64 Å."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep caches and run folders the code writes out of the user's home during tests."""
    import os

    os.environ["GENMS_CACHE_DIR"] = str(tmp_path_factory.mktemp("genms-cache"))
    os.environ["GENMS_HOME"] = str(tmp_path_factory.mktemp("genms-home"))
    os.environ["GENMS_OFFLINE"] = "1"  # no test reaches Wikipedia; the Wikipedia tests use a fake server
    os.environ["GENMS_UNIMDM_TEMPLATES"] = "off"  # the same Uni-MDM samples whether or not this checkout built its symmetry files
    yield


def perturbed(structure: Structure, displacement: float = 0.2, strain: float = 0.05, seed: int = 0) -> Structure:
    """Every atom displaced by ``displacement`` Å in a random direction, the cell strained."""
    import numpy as np

    rng = np.random.default_rng(seed)
    result = structure.copy()
    result.apply_strain([strain, -strain * 0.6, strain * 0.8])
    for index in range(len(result)):
        direction = rng.normal(size=3)
        result.translate_sites([index], displacement * direction / np.linalg.norm(direction), frac_coords=False)
    return result


@pytest.fixture
def perturb():
    """The :func:`perturbed` helper, as a fixture."""
    return perturbed


@pytest.fixture
def anthropic_env(monkeypatch):
    """Point the real Anthropic client at a fake server: call with a responder, get the server."""
    from fake_anthropic import FakeAnthropic

    servers = []

    def start(responder, **options):
        server = FakeAnthropic(responder, **options).__enter__()
        servers.append(server)
        monkeypatch.delenv("ANTHROPIC_API_URL", raising=False)  # it would win over ANTHROPIC_BASE_URL
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("GENMS_CLAUDE_TIMEOUT", "5")
        monkeypatch.delenv("GENMS_CLAUDE_MODEL", raising=False)
        monkeypatch.delenv("GENMS_CLAUDE_PRICE", raising=False)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)
    violations = [v for server in servers for v in server.violations]
    assert not violations, f"the fake's responder broke the API's protocol or raised: {violations[:3]}"


@pytest.fixture
def fresh_store(tmp_path, monkeypatch):
    """An empty vector store of its own, offline unless a test turns Wikipedia on."""
    from tools.knowledge import _offline_until

    monkeypatch.setenv("GENMS_VECTOR_DIR", str(tmp_path / "store"))
    _offline_until.cache_clear()
    yield tmp_path / "store"
    _offline_until.cache_clear()
