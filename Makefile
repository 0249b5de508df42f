# Everything a fresh machine needs: `make demo` and `make test` create .venv and install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= demo

.PHONY: install demo test lab bench clean-outputs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to 2.13.0 in pyproject.toml; a looser pin would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## run the whole pipeline on the generated demo data; prints where the report is
	$(BIN)/python -m nbutils run --profile demo --run $(RUN)

test: $(STAMP)  ## the test suite (no network, no GPU needed)
	$(BIN)/python -m pytest

lab: $(STAMP)  ## JupyterLab on this environment, notebooks ready to run interactively
	cd notebooks && ../$(BIN)/jupyter lab

bench: $(STAMP)  ## speed measurements recorded in the README (not part of the tests)
	$(BIN)/python -m benchmarks.bench_image_cache
	$(BIN)/python -m benchmarks.bench_download
	$(BIN)/python -m benchmarks.bench_validate

clean-outputs:
	rm -rf outputs/*/
