# `make run` and `make test` work on a fresh clone: they create .venv and install what is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench check-vllm

$(STAMP): requirements.txt requirements-assets.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m streamlit run app.py

test: $(STAMP)
	$(PY) -m pytest -q

# One table of side-by-side timings (~10 min on 2 cores); writes bench/RESULTS.md.
bench: $(STAMP)
	$(PY) -m pip install -q -r requirements-bench.txt
	PYTHONPATH=. $(PY) -m bench.run

# The vLLM check (issue 15): vLLM's CPU build in its own venv, tests against live vLLM servers (~4-7 min).
check-vllm: $(STAMP)
	scripts/check_vllm.sh
