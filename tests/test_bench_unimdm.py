"""The Uni-MDM benchmark's breakdown of match rates (pure bookkeeping on evaluated pairs)."""

from evals.bench_csp_unimdm import breakdown


def result(comp_valid: bool, struct_valid: bool, rms: float | None) -> dict:
    return {"comp_valid": comp_valid, "struct_valid": struct_valid, "rms": rms}


def test_breakdown_by_lattice_family_and_cell_size():
    results = [result(True, True, 0.01),    # cubic rocksalt, 2 atoms: matched
               result(False, True, 0.02),   # cubic, 8 atoms: matches but SMACT rejects the composition
               result(True, True, None),    # orthorhombic, 12 atoms: valid, no match
               result(True, False, 0.10),   # triclinic, 24 atoms: atoms too close
               result(True, True, 0.03)]    # trigonal (hexagonal family), 3 atoms: matched
    parts = breakdown(results, [225, 221, 62, 1, 166], [2, 8, 12, 24, 3])

    families = parts["by_lattice_family"]
    assert list(families)[0] == "cubic"  # the largest bucket first
    assert families["cubic"] == {"crystals": 2, "match_rate": 0.5, "valid": 0.5, "match_rate_of_valid": 1.0}
    assert families["orthorhombic"] == {"crystals": 1, "match_rate": 0.0, "valid": 1.0, "match_rate_of_valid": 0.0}
    assert families["triclinic"] == {"crystals": 1, "match_rate": 0.0, "valid": 0.0, "match_rate_of_valid": 0.0}
    assert families["hexagonal"]["match_rate"] == 1.0 and "trigonal" not in families

    atoms = parts["by_atoms"]
    assert list(atoms) == ["1-4", "5-8", "9-12", ">=21"]  # in size order, empty bins left out
    assert atoms["1-4"] == {"crystals": 2, "match_rate": 1.0, "valid": 1.0, "match_rate_of_valid": 1.0}
    assert atoms["5-8"]["match_rate"] == 0.0 and atoms[">=21"]["valid"] == 0.0
    assert sum(b["crystals"] for b in atoms.values()) == len(results)

    origin = parts["by_origin"]  # P1 (1) has polar axes; Fm-3m, Pm-3m, Pnma, R-3m fix the origin
    assert origin["polar axes"] == {"crystals": 1, "match_rate": 0.0, "valid": 0.0, "match_rate_of_valid": 0.0}
    assert origin["fixed origin"] == {"crystals": 4, "match_rate": 0.5, "valid": 0.75, "match_rate_of_valid": 0.6667}
