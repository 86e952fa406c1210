# The two commands the README opens with. Each creates/refreshes .venv when pyproject.toml changes.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[notebooks,dev]"
	touch $@

demo: .venv/.installed
	$(PY) -m anima_probe.cli demo

test: .venv/.installed
	$(PY) -m pytest -q

.PHONY: demo test
