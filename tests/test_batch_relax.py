"""Batched relaxation follows each structure's one-at-a-time path and stops each on its own."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from tools.batch_relax import relax_many
from tools.relaxation import relax


@pytest.fixture(scope="module")
def rattled():
    """Three small cells, rattled by 0.1 Å and strained, of different sizes and chemistries."""
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.75), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    srtio3 = Structure(Lattice.cubic(4.0), ["Sr", "Ti", "O", "O", "O"],
                       [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    mgo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.1), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    structures = []
    for seed, structure in enumerate((nacl, srtio3, mgo)):
        structure = structure.copy()
        structure.perturb(0.1, min_distance=0.05) if seed else None
        structure.apply_strain(0.03 * (seed - 1))
        structures.append(structure)
    return structures


def test_batched_relaxation_gives_the_one_at_a_time_results(rattled):
    alone = [relax(s, fmax=0.05, max_steps=12) for s in rattled]
    together = relax_many(rattled, fmax=0.05, max_steps=12, batch_size=2)  # two batches per step
    for one, batch in zip(alone, together):
        assert batch.final_energy_per_atom == pytest.approx(one.final_energy_per_atom, abs=1e-3)
        assert batch.initial_energy_per_atom == pytest.approx(one.initial_energy_per_atom, abs=1e-4)
        assert batch.converged == one.converged and batch.max_force == pytest.approx(one.max_force, abs=5e-3)
        assert np.allclose(batch.structure.lattice.abc, one.structure.lattice.abc, atol=1e-2)
        assert batch.rmsd == pytest.approx(one.rmsd, abs=1e-2)


def test_each_structure_stops_on_its_own_convergence(rattled):
    relaxed = relax_many([rattled[0]], fmax=0.1, max_steps=100)[0]  # a single structure works too
    assert relaxed.converged and relaxed.max_force < 0.1
    steps_seen = []
    again, moving = relax_many([relaxed.structure, rattled[0]], fmax=0.1, max_steps=100,
                               on_step=lambda active, step: steps_seen.append((step, active)))
    assert again.steps <= 2 < moving.steps and again.converged and moving.converged
    assert steps_seen[0] == (1, 1) and steps_seen[-1] == (moving.steps + 1, 0)  # the relaxed one stops at once


def test_limits_are_checked_before_any_work(rattled):
    with pytest.raises(ValueError, match="fmax"):
        relax_many(rattled, fmax=5.0)
    with pytest.raises(ValueError, match="batch_size"):
        relax_many(rattled, batch_size=0)
    with pytest.raises(ValueError):
        relax_many([*rattled, Structure(Lattice.cubic(3), ["Og"], [[0, 0, 0]])])
    assert relax_many([], max_steps=5) == []
    capped = relax_many(rattled[1:2], fmax=0.001, max_steps=3)[0]
    assert capped.steps == 3 and not capped.converged


def test_scoring_relaxes_in_one_batch_and_isolates_a_structure_that_breaks_it(rattled, monkeypatch, caplog):
    """score_structures(relax=True) relaxes everything in one batched call; only when the batch
    raises does it relax one at a time, so the bad structure loses its own result only (logged)."""
    import tools.batch_relax as batch_relax
    import tools.relaxation as relaxation
    from tools.scoring import score_structures

    calls = {"batched": 0, "alone": 0}
    real_many, real_one = batch_relax.relax_many, relaxation.relax

    def counted_many(structures, **kwargs):
        calls["batched"] += 1
        return real_many(structures, **kwargs)

    def counted_one(structure, **kwargs):
        calls["alone"] += 1
        if len(structure) == 5:  # the perovskite breaks the model in this test
            raise RuntimeError("model failure")
        return real_one(structure, **kwargs)

    monkeypatch.setattr(batch_relax, "relax_many", counted_many)
    monkeypatch.setattr(relaxation, "relax", counted_one)
    seen = []
    reports = score_structures(rattled, relax=True, max_steps=4, fmax=0.1, progress=lambda *event: seen.append(event))
    assert calls == {"batched": 1, "alone": 0} and all(r["relax_steps"] is not None for r in reports)
    assert ("relax", 3, 3) in seen

    def broken_many(structures, **kwargs):
        raise RuntimeError("one structure broke the batch")

    monkeypatch.setattr(batch_relax, "relax_many", broken_many)
    reports = score_structures(rattled, relax=True, max_steps=4, fmax=0.1)
    assert calls["alone"] == 3 and "relaxing the 3 structures one at a time" in caplog.text
    assert reports[1]["reason"] == "relaxation failed: RuntimeError: model failure"
    assert reports[0]["relax_steps"] is not None and reports[2]["relax_steps"] is not None


def test_a_stop_raised_by_progress_ends_the_batch_at_once(rattled):
    """The search's stop (raised from its progress callback) is not a failed batch: it is not retried."""
    from tools.scoring import score_structures

    class Stop(Exception):
        pass

    def stop(stage, done, total):
        raise Stop("stopped by the caller")

    with pytest.raises(Stop):
        score_structures(rattled, relax=True, max_steps=50, fmax=0.01, progress=stop)
