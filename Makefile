# One command each, doing all its own set-up on a fresh machine: `make test`, `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MP_STAMP := .cache/micropython/.ready

.PHONY: test lint pytest demo bench-board bench-server bench-station micropython clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

$(MP_STAMP): tools/get_micropython.sh
	bash tools/get_micropython.sh >/dev/null
	mkdir -p $(dir $(MP_STAMP)) && touch $(MP_STAMP)

micropython: $(MP_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check signing ota_server tools tests bench
	$(VENV)/bin/ruff check --config bootloader_py/ruff.toml bootloader_py
	$(VENV)/bin/mypy

pytest: $(STAMP) $(MP_STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint pytest

demo: $(STAMP) $(MP_STAMP)
	$(PY) -m tools.demo

bench-board: $(STAMP) $(MP_STAMP)
	$(PY) bench/bench_board.py

bench-server: $(STAMP) $(MP_STAMP)
	$(PY) bench/bench_server.py

bench-station: $(STAMP) $(MP_STAMP)
	$(PY) bench/bench_station.py

clean:
	rm -rf $(VENV) .cache demo-data bench/out
