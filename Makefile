# Everything a fresh machine needs: `make demo` and `make test` create .venv and install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= demo

.PHONY: install demo test lint lock lab bench clean-outputs

# Installs the exact versions in requirements.lock (what passed the tests), then the package itself
# without resolving again; pip check fails if pyproject.toml gained a dependency the lock lacks (run `make lock`).
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 in pyproject.toml; a looser pin would pull a multi-GB CUDA build.
	# The lock says torch==2.13.0 with no +cpu label: pip takes the local CPU wheel where one is on offer, CUDA elsewhere.
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## run the whole pipeline on the generated demo data; prints where the report is
	$(BIN)/python -m nbutils run --profile demo --run $(RUN)

test: $(STAMP) lint  ## lint, then the test suite (no network, no GPU needed)
	$(BIN)/python -m pytest

lint: $(STAMP)  ## ruff: lint rules and formatting (configured in pyproject.toml)
	$(BIN)/ruff check nbutils tests benchmarks
	$(BIN)/ruff format --check nbutils tests benchmarks

# Refresh requirements.lock after changing pyproject.toml's dependencies. It installs pip-tools into .venv, then
# pip-compile resolves with pip's resolver and this machine's pip configuration, keeping every pin already in the
# lock that still fits (`make lock LOCK_ARGS=--upgrade` re-resolves everything, `LOCK_ARGS="-P pkg"` one package).
# The sed drops local version labels (torch 2.13.0+cpu -> 2.13.0) so the same lock installs on a GPU machine.
LOCK_ARGS ?=
lock:  ## re-resolve requirements.lock from pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip-tools
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --allow-unsafe --strip-extras --no-emit-options \
		$(LOCK_ARGS) --output-file requirements.lock pyproject.toml
	sed -E -i 's/^([A-Za-z0-9._-]+==[^+[:space:]]+)\+[^[:space:]]+/\1/' requirements.lock
	{ printf '%s\n' \
		'# Exact versions of every package that `pip install -e .` resolves from pyproject.toml (the project' \
		'# itself excluded): the set that passed the tests. `make install` installs from this file; `make lock`' \
		'# refreshes it after pyproject.toml changes (pip-tools pip-compile --allow-unsafe --strip-extras' \
		'# --no-emit-options, then local version labels such as +cpu are dropped). Do not edit by hand.'; \
	  cat requirements.lock; } > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock

# JupyterLab refuses to start as root without --allow-root, and containers usually run as root.
# More options: make lab LAB_ARGS="--port 8890 --no-browser --ip 0.0.0.0"
LAB_ARGS ?=
lab: $(STAMP)  ## JupyterLab on this environment, notebooks ready to run interactively
	cd notebooks && ../$(BIN)/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

bench: $(STAMP)  ## speed measurements recorded in the README (not part of the tests)
	$(BIN)/python -m benchmarks.bench_image_cache
	$(BIN)/python -m benchmarks.bench_shards
	$(BIN)/python -m benchmarks.bench_download
	$(BIN)/python -m benchmarks.bench_validate
	$(BIN)/python -m benchmarks.bench_captioning
	$(BIN)/python -m benchmarks.bench_small_cnn
	$(BIN)/python -m benchmarks.bench_clipcap
	$(BIN)/python -m benchmarks.bench_real_size

.PHONY: docs
docs: $(STAMP)  ## write docs/parameters.md (from the config dataclasses) and the README's pipeline picture
	$(BIN)/python -m nbutils parameters --output docs/parameters.md
	$(BIN)/python -m nbutils pipeline --readme README.md

clean-outputs:
	rm -rf outputs/*/
