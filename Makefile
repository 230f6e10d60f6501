# redshake developer commands. Every target installs what it needs first.
PY ?= python3
PIP ?= $(PY) -m pip

.PHONY: install servers test demo lint bench

install:
	$(PIP) install -q --disable-pip-version-check -e '.[test]'

servers:
	bash scripts/install-servers.sh

# Installs the package, the test servers (Redis 5.0/6.0/6.2/7.0, Valkey 8.1/9.1) and runs the suite.
# Two pytest workers (pytest-xdist): most of a test is spent waiting on servers and on
# redshake's own processes, so two workers on two cores take ~40 % less time than one.
PYTEST_WORKERS ?= 2
test: install servers
	$(PY) -m ruff check src tests bench scripts
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# On a fresh machine: installs everything, starts a source Redis with sample data of every
# type and an empty target, runs a LIVE sync while the source takes writes (phase and lag
# printed every second), waits until converged and verifies every key. (An RDB file restore:
# `python3 scripts/demo.py --restore`.)
demo: install servers
	$(PY) scripts/demo.py

lint: install
	$(PY) -m ruff check src tests bench scripts

bench: install servers
	$(PIP) install -q --disable-pip-version-check rdbtools rdb-py
	$(PY) bench/rdb_parse.py
	$(PY) bench/rdb_restore.py
	$(PY) bench/full_sync.py
	$(PY) bench/incremental.py
	$(PY) bench/incremental.py --catchup
	$(PY) bench/lua_function.py
	$(PY) bench/big_bulk.py
	$(PY) bench/verify.py
	$(PY) bench/dual_channel.py --repeat 3
