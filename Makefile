# SAGE — two commands on a fresh machine:
#   make run    install everything into .venv, build the built-in zoo (once), evaluate every zoo SAE on every task,
#               print the leaderboard (best TOP trained SAEs per task + controls) and where the full report is
#   make test   install what is missing, then lint and run every test (slow ones included; the runs at GPT-2 small's
#               real shape are in make bench)
# and a standing service: `make serve` / `make serve-stop` (README "A standing service: watch for new SAEs")
SHELL := /bin/bash
# Python's default: each module's bytecode is cached on its first import. An environment that turns that off
# (PYTHONDONTWRITEBYTECODE=1, as the development machine sets it) makes every process compile transformers, prefect,
# pandas ... from source again (uv installs them without bytecode): `import flows.evaluate` took 17-18.5 s of CPU
# instead of 9.5-10.5 s, in every CLI run, Dask worker and flow run
unexport PYTHONDONTWRITEBYTECODE
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SAGE_HOME ?= ./sage-data
TOP ?= 12
# torch: the CPU build where there is no CUDA (never a multi-GB CUDA download by accident). Override TORCH_SPEC /
# TORCH_INDEX for another build, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu on a machine without a local wheel.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP := $(PY) -m pip --disable-pip-version-check
QUIET_PIP := 2>&1 | grep -v "is neither a file nor a directory" || true
STAMP := $(VENV)/.sage-installed

# the standing service's ports, on 127.0.0.1: the Prefect server (API and UI) and its PostgreSQL (5433: a system
# cluster may hold 5432)
PREFECT_PORT ?= 4200
PG_PORT ?= 5433
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)

.PHONY: run test install lint bench clean-data ui ui-shots chromium postgresql serve serve-stop serve-status

# the install is a stage of `make run` like the others: one line when it starts, one with its duration when it ends
STAGE_LINE = echo "[sage $$(date +%H:%M:%S)] install:"
INSTALL_T0 := $(VENV)/.install-started
NOW := $(PYTHON) -c "import time; print(time.time())"
SINCE_T0 := $(PYTHON) -c "import sys, time; print(f'{time.time() - float(open(sys.argv[1]).read()):.1f}')" $(INSTALL_T0)

$(PY):
	@mkdir -p $(VENV) && $(NOW) > $(INSTALL_T0) && $(STAGE_LINE) "torch, SAGE and its dependencies into $(VENV)"
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@[ -f $(INSTALL_T0) ] || { $(NOW) > $(INSTALL_T0); $(STAGE_LINE) "torch, SAGE and its dependencies into $(VENV)"; }
	@set -o pipefail; \
	if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then echo "CUDA found: installing torch from PyPI"; $(PIP) install -q torch $(QUIET_PIP); \
	  else echo "no CUDA: installing $(TORCH_SPEC) (CPU build)"; \
	    $(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(QUIET_PIP); fi; \
	fi
	@$(PY) -W ignore -c "import torch" || { echo "torch failed to install; set TORCH_SPEC/TORCH_INDEX (see README)"; exit 1; }
	@echo "installing SAGE and its dependencies into $(VENV) ..."
	@# uv resolves and installs in seconds (pip takes minutes); it keeps the torch build installed above
	@if $(PIP) install -q uv $(QUIET_PIP) && $(VENV)/bin/uv pip install --python $(PY) -q -e '.[dev]'; then :; \
	else echo "uv unavailable: installing with pip (slower)"; $(PIP) install -q -e '.[dev]' $(QUIET_PIP); fi
	@$(PY) -c "import sage_core, transformer_lens, sae_lens, prefect, zarr" || { echo "install incomplete"; exit 1; }
	@touch $(STAMP)
	@$(STAGE_LINE) "done in $$($(SINCE_T0)) s"; rm -f $(INSTALL_T0)

install: $(STAMP)

run: install
	SAGE_HOME=$(SAGE_HOME) $(VENV)/bin/sage evaluate --top $(TOP)

lint: install
	$(VENV)/bin/ruff check sage_core storage tasks flows report tests benchmarks

# every test but the end-to-end runs at GPT-2 small's real shape (marker real_shape: minutes on a CPU), which
# `make bench` runs
# two pytest workers, each test file on one (its module fixtures built once): most of a test's wall is waiting on a
# CLI, a server or a killed process, so two share the 2 cores well
test: install lint postgresql chromium
	$(PY) -m pytest -q tests -m "not real_shape" -n 2 --dist loadfile

bench: install postgresql
	$(PY) -m benchmarks.zoo
	$(PY) -m benchmarks.capture
	$(PY) -m benchmarks.locate
	$(PY) -m benchmarks.fit
	$(PY) -m benchmarks.score
	$(PY) -m benchmarks.scale
	$(PY) -m benchmarks.service
	$(PY) -m benchmarks.pretrained
	$(PY) -m pytest -q tests -m real_shape

# the Prefect UI at http://127.0.0.1:4200 (flow runs, task runs, stage progress, leaderboards, plots); a `sage` command
# run with PREFECT_API_URL=http://127.0.0.1:4200/api reports to it, otherwise each command starts its own temporary server
ui: install
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/prefect server start --host 127.0.0.1

# the Prefect UI as a person sees it, in headless Chromium at 1600 px after an evaluation and a watch run: the
# leaderboard, summary, plots and watch artifacts and the flow run page, asserted on and saved to results/ui/*.png
# (the emoji font: the report marks the controls' verdict with one, a box without it)
ui-shots: install chromium
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { echo "Chromium not found: run 'apt-get install chromium' as root, then make ui-shots again"; exit 1; }
	@fc-list 2>/dev/null | grep -qi emoji || $(SUDO) apt-get install -y fonts-noto-color-emoji
	SAGE_UI_SHOTS=results/ui $(PY) -m pytest -q tests/acceptance/test_ui_browser.py

# headless Chromium for the Prefect UI's browser test (tests/acceptance/test_ui_browser.py): the Debian package. Where
# it cannot be installed (no root, no apt) `make test` goes on and that test skips, saying so; `make ui-shots` stops.
chromium:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif command -v apt-get >/dev/null && { $(SUDO) apt-get update -qq >/dev/null 2>&1 && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; then \
	  echo "installed Chromium (apt-get install chromium)"; \
	else echo "note: Chromium could not be installed (run 'apt-get install chromium' as root): the Prefect UI's" \
	  "browser test skips"; fi

# PostgreSQL, Prefect's database for the standing service (its test too): the Debian package where it is missing
postgresql:
	@if [ -n "$$SAGE_PG_BIN" ] || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
	  command -v postgres >/dev/null; then :; elif command -v apt-get >/dev/null; then echo "installing PostgreSQL (apt-get install postgresql) ..."; \
	  $(SUDO) apt-get update -qq >/dev/null && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 || \
	  { echo "could not install PostgreSQL: run 'apt-get install postgresql' as root, then make again"; exit 1; }; \
	else echo "PostgreSQL not found: install it (>= 13), or set SAGE_PG_BIN to the directory of its postgres and initdb"; \
	  exit 1; fi

# the standing service: PostgreSQL (data under SAGE_HOME/service), the Prefect server on it, the work pool, every
# deployment of prefect.yaml (watch-nightly runs at 03:00 UTC) and one process worker, all on 127.0.0.1
# SERVE_ARGS: more options of `sage serve start`, e.g. SERVE_ARGS="--deployment watch-nightly" deploys only that one
# The API asks for the password in SAGE_HOME/service/api.secret (0600); a second `make serve` restarts only what died
# and marks the flow runs whose process died Crashed
serve: install postgresql
	@SAGE_HOME=$(SAGE_HOME) $(VENV)/bin/sage serve start --port $(PREFECT_PORT) --pg-port $(PG_PORT) $(SERVE_ARGS)

# stops what `make serve` started, by the pids it recorded: worker, server, PostgreSQL; safe to run twice
serve-stop:
	@if [ -x $(VENV)/bin/sage ]; then SAGE_HOME=$(SAGE_HOME) $(VENV)/bin/sage serve stop; \
	else echo "nothing to stop: $(VENV) is not installed"; fi

# each part: up, dead (its process is gone: `make serve` restarts only what died), not answering, or stopped
serve-status:
	@SAGE_HOME=$(SAGE_HOME) $(VENV)/bin/sage serve status --port $(PREFECT_PORT) --pg-port $(PG_PORT)

# a running service holds its database under SAGE_HOME: stop it first
clean-data: serve-stop
	rm -rf $(SAGE_HOME)
