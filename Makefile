# voicebot: `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)

.PHONY: run test lint format bench sync uv

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet uv

sync: uv
	$(UV) sync --locked

run: sync
	$(UV) run voicebot run

test: sync
	$(UV) run pytest

lint: sync
	$(UV) run ruff check src tests benchmarks
	$(UV) run ruff format --check src tests benchmarks
	$(UV) run mypy

format: sync
	$(UV) run ruff check --fix src tests benchmarks
	$(UV) run ruff format src tests benchmarks

bench: sync
	$(UV) run python benchmarks/engine.py
	$(UV) run python benchmarks/ingest.py
	$(UV) run python benchmarks/ingest.py --backlog 0 --burst 500 --users 100 --rate 250 \
		--default-limits --no-transcription --output bench-results/admission.md
	$(UV) run python benchmarks/cache.py
