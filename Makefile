# One command installs and demonstrates, one command tests (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench bench-quick bench-refs proto proto-check lint-proto clean

# A strict editable install links each module into build/ and puts that one
# directory on sys.path: no import hook at interpreter start (the default,
# lenient mode imports pathlib, re and more in every Python process: ~30 ms
# here). It links files, so it is redone whenever modules are added or removed.
MODULES := $(sort $(wildcard trainer_sdk/*.py trainer_sdk/*/*/*.py supervisor/*.py supervisor/*/*.py policies/*.py))
LINKED  := $(VENV)/.linked
STRICT  := --config-settings editable_mode=strict

install: $(STAMP)
	@echo '$(MODULES)' | cmp -s - $(LINKED) 2>/dev/null || { \
	    $(PY) -m pip install --quiet --no-deps -e . $(STRICT) && echo '$(MODULES)' > $(LINKED); }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' $(STRICT)
	echo '$(MODULES)' > $(LINKED)
	touch $(STAMP)

demo: install
	$(PY) examples/demo.py

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install bench-refs
	$(PY) -m bench.run --full

bench-quick: install bench-refs
	$(PY) -m bench.run --quick

# The live-config tools the issue compares against, measured beside ours (bench/_references.py); not
# dependencies of the project. Kiponos without its MCP server's dependencies: its client needs only
# websocket-client. LiveTune's licence allows research and non-profit use; `make bench BENCH_REFS=`
# skips both, and the rows then show the issue's quoted figures.
BENCH_REFS ?= LiveTune==0.0.8 kiponos==0.2.0
bench-refs: install
	@if [ -n "$(strip $(BENCH_REFS))" ]; then \
	    $(PY) -m pip install --quiet --no-deps $(BENCH_REFS) 'websocket-client>=1.8,<2'; fi

# Regenerate the gRPC code from protos/ (never edit the generated files by hand).
proto: install
	$(PY) -m grpc_tools.protoc -I protos \
	    --python_out=. --pyi_out=. --grpc_python_out=. \
	    protos/trainer_sdk/protocol/v1/supervisor.proto

# buf's STANDARD lint rules; buf comes as an npm package.
lint-proto:
	cd protos && npx --yes @bufbuild/buf@1.75.0 lint

clean:
	rm -rf $(VENV) build *.egg-info
