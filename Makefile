# The README's commands. Each creates/refreshes .venv when pyproject.toml changes.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1

# Also registers the notebooks' kernel: this venv's interpreter, inside the venv (papermill runs it headless).
.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[notebooks,dev]"
	$(PY) -m ipykernel install --sys-prefix --name anima-probe --display-name "anima-probe (this checkout)"
	touch $@

demo: .venv/.installed
	$(PY) -m anima_probe.cli demo

# The fast tiers: unit (no model files) and integration (tiny twins in the real formats), without the slow tests.
test: .venv/.installed
	$(PY) -m pytest -q -m "not slow" tests/unit tests/integration

# What `make test` leaves out: the slow unit/integration tests and the acceptance tier (the shipped toy world and
# the committed reports). CI runs both targets. The acceptance tier reruns the experiments into a temporary folder
# unless $$ANIMA_PROBE_RESULTS names one that holds fresh runs (CI points it at its scratch folder).
test-acceptance: .venv/.installed
	$(PY) -m pytest -q -m slow tests/unit tests/integration
	$(PY) -m pytest -q tests/acceptance

# Ruff over the code, the tests and the notebooks (pyproject.toml: extend-include *.ipynb).
lint: .venv/.installed
	.venv/bin/ruff check anima_probe experiments benchmarks tests notebooks

# Every experiment on the toy world (only the stale ones rerun), the notebooks, reports/*.md and the index.
reports: .venv/.installed
	$(PY) -m anima_probe.cli report

# The regression gate: latest toy-world runs vs reports/baselines/toy/.
regress: .venv/.installed
	$(PY) -m anima_probe.cli regress --tier toy

ci:
	.ci/run

.PHONY: demo test test-acceptance lint reports regress ci
