# Two commands do all set-up on a fresh Linux machine with Python 3.11:
#   make run   - start the dashboard
#   make test  - run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The team's shared copy of the dataset, when it sits beside the checkout; otherwise the code's own default.
ifneq ($(wildcard ../shared/caltech101/101_ObjectCategories),)
export CALTECH101_ROOT ?= $(abspath ../shared/caltech101)
endif
# Python may cache bytecode (in the ignored __pycache__/ folders) even where the machine turns that off: the suite
# starts ~60 Python processes (servers, workers, CLI runs), and without the cache each one compiles the project's
# modules again and each pytest process rewrites every test file (18 CPU-s of 555; docs/benchmarks.md).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test lint bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# The dashboard starts with glibc's malloc held to one arena (settings.ONE_MALLOC_ARENA; tests/test_settings.py
# checks this line): its training thread then reuses freed memory as the CLI's runs do (training/speed.py).
run: $(VENV)/.installed
	GLIBC_TUNABLES=$${GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}glibc.malloc.arena_max=1 $(PY) -m streamlit run streamlit_app.py

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -n 3 --dist loadfile -m "not timing" --durations=25
	sync  # the first part's writes go to disk now, not as kernel writeback beside the timing tests
	$(PY) -m pytest -m timing

lint: $(VENV)/.installed
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output
