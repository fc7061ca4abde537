# The two commands a fresh machine needs are `make run` and `make test`;
# both create .venv and install what they need by themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-deploy bench clean

install: $(STAMP)

# Re-installs only when the pins or the package metadata change.
$(STAMP): pyproject.toml requirements.txt requirements-dev.txt requirements-deploy.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt -r requirements-deploy.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/s3cache up $(if $(wildcard .env),--env-file .env)

# The machine's test tools (Chromium, the deployment tests' Debian packages and Debian root) are
# installed before pytest, never by a test; quick when they are there (tests/host_tools.py).
# pytest exits 5 when nothing is collected; that is not a failure here.
test: $(STAMP)
	$(BIN)/python -m tests.host_tools
	$(BIN)/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Only the deployment tests (compose under podman, Ansible into a booted Debian container; need root).
test-deploy: $(STAMP)
	$(BIN)/python -m tests.host_tools
	$(BIN)/python -m pytest tests/deploy

# Benchmarks: installs wrk, nginx and matplotlib as needed; writes bench/results/latest.md and plots.
bench: $(STAMP)
	bench/run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) cache .pytest_cache
