# The two commands a fresh machine needs are `make run` and `make test`;
# both create .venv and install what they need by themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The test and deployment tools (pytest, moto, ansible ...), on top of the runtime; only `make test` and friends need them.
TEST_STAMP := $(VENV)/.installed-test
PIP := $(BIN)/pip install --disable-pip-version-check --progress-bar off

.PHONY: install install-dev run test test-deploy bench clean

# What running needs: the runtime pins and s3cache itself (console script .venv/bin/s3cache).
install: $(STAMP)

# Re-installs only when the pins or the package metadata change.
$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "make: installing the runtime (requirements.txt) into $(VENV) ..."
	$(PIP) --quiet -r requirements.txt
	$(PIP) --quiet --no-deps -e .
	touch $(STAMP)

# The runtime plus the test and deployment tools (what `make test` and bench/run need).
install-dev: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) requirements-dev.txt requirements-deploy.txt
	@echo "make: installing the test and deployment tools (requirements-dev.txt, requirements-deploy.txt) into $(VENV) ..."
	$(PIP) --quiet -r requirements-dev.txt -r requirements-deploy.txt
	touch $(TEST_STAMP)

# Reads ./.env when present (as every s3cache subcommand does); other commands: .venv/bin/s3cache --help.
run: $(STAMP)
	@echo "make: starting $(BIN)/s3cache up (other commands: $(BIN)/s3cache --help, or . $(BIN)/activate first)"
	$(BIN)/s3cache up

# The machine's test tools (Chromium, the deployment tests' Debian packages and Debian root) are
# installed before pytest, never by a test; quick when they are there (tests/host_tools.py).
# pytest exits 5 when nothing is collected; that is not a failure here.
test: $(TEST_STAMP)
	$(BIN)/python -m tests.host_tools
	$(BIN)/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Only the deployment tests (compose under podman, Ansible into a booted Debian container; need root).
test-deploy: $(TEST_STAMP)
	$(BIN)/python -m tests.host_tools
	$(BIN)/python -m pytest tests/deploy

# Benchmarks: installs wrk, nginx and matplotlib as needed; writes bench/results/latest.md and plots.
bench: $(TEST_STAMP)
	bench/run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) cache .pytest_cache
