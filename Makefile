# One command installs and demonstrates, one command tests (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench bench-quick proto proto-check lint-proto clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(PY) examples/demo.py

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) -m bench.run --full

bench-quick: install
	$(PY) -m bench.run --quick

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
