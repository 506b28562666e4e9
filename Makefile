# genms: set-up, main job, tests and benchmarks. Every target installs what it needs first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.genms-installed

.PHONY: setup demo test bench index references unimdm-data clean

setup: $(STAMP)

# torch first, on its own: the pinned CPU build lies on disk; asked for indirectly, pip would
# fetch a multi-GB CUDA build instead.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The main job on the offline default (no network, no API key): a hierarchical search.
demo: setup
	$(BIN)/genms doctor
	$(BIN)/genms search "a novel spinel oxide containing Mn" -H 12 -W 3 -L 2 --relax-steps 40 -n 3 --out runs/demo
	$(BIN)/genms memory list -n 3
	$(BIN)/genms knowledge search "pyrochlore A2B2O7" -k 3 --no-wikipedia
	$(BIN)/genms formula check SrTiO3 MgAl2O4 Sr4Ti4O12 Fe3O4 Zn2Ti2O7 Cs2AgBiBr6 Xx2O
	$(BIN)/genms formula propose "a novel spinel oxide containing Mn" -n 10 --offline
	$(BIN)/genms generate template Y2Ti2O7 --family pyrochlore -n 2 --out $(VENV)/demo
	$(BIN)/genms generate diffusion SrTiO3 -n 3 --out $(VENV)/demo-diffusion
	$(BIN)/genms generate gfn --reward band_gap:1.34 --elements Li,Mn,Fe,O -n 2 --relax-steps 20 --out $(VENV)/demo-gfn
	$(BIN)/genms generate unimdm --elements Ba,Ti,O --band-gap 3.0 -n 2 --out $(VENV)/demo-unimdm
	$(BIN)/genms structure check evals/examples/*.cif
	$(BIN)/genms score evals/examples/SrTiO3_perovskite.cif evals/examples/NaCl_rocksalt.cif evals/examples/overlapping_atoms.cif

test: setup
	$(BIN)/python -m pytest -q

# Figures, not tests. The formation-energy MAE computes CHGNet energies of MP-20 test once
# (about 3 minutes on 2 cores, then cached in ~/.cache/genms).
bench: setup
	$(BIN)/python -m evals.bench_formula_check
	$(BIN)/python -m evals.bench_scoring
	$(BIN)/python -m evals.bench_formation_energy
	$(BIN)/python -m evals.bench_retrieval

# Refit the CHGNet elemental reference energies on MP-20 train (about 12 minutes).
references: setup
	$(BIN)/python -m tools.formation_energy fit

# Rebuild the committed known-formula index from the shared data.
index: setup
	$(BIN)/python -m tools.uniqueness build
	$(BIN)/python -m tools.families build-members

# Uni-MDM's symmetry tensor files (ignored by git): the GPU runs' training and test inputs and the
# prototype templates of `genms generate unimdm` (GENMS_UNIMDM_TEMPLATES). About 20 minutes on 2 cores (19.5 measured);
# UNIMDM_DATA_ARGS="--limit 20" for a quick check.
UNIMDM_DATA ?= .device_data_unimdm
unimdm-data: setup
	$(BIN)/python -m generators.unimdm.data build --out $(UNIMDM_DATA) --splits test,val $(UNIMDM_DATA_ARGS)
	$(BIN)/python -m generators.unimdm.data build --out $(UNIMDM_DATA) --splits train,val_rest --no-check $(UNIMDM_DATA_ARGS)
	$(BIN)/python -m generators.unimdm.symmetry ops $(UNIMDM_DATA)/wyckoff_ops.pt

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
