# `make run`: set up .venv and run the quick paper reproduction; `make test`: the tests.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Use ../shared/data when it sits beside the checkout and DPMED_DATA is not set.
export DPMED_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data))

.PHONY: run test lint bench-speed clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: $(STAMP)
	$(BIN)/dpmed bench paper-quick
	$(BIN)/dpmed report runs/paper-quick

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

bench-speed: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs
