# voicebot: `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)

.PHONY: run test test-tools lint format bench sync uv locales vendor

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet uv

sync: uv
	$(UV) sync --locked

run: sync
	$(UV) run voicebot run

# Two pytest-xdist workers, one per core: most of a test's time uses one core (see
# tests/conftest.py, which also runs the tests marked `exclusive` alone).
test: sync test-tools
	$(UV) run pytest -n 2 --dist loadgroup


# Tools the tests check operator files with or start as servers (a missing one fails in CI):
# each is "how to find it@Debian packages". nginx for `nginx -t` (openssl for its test
# certificate), promtool (Debian's `prometheus`) for `promtool check rules`, chromium for the
# dashboard's browser test, PostgreSQL for the tests on both databases, RabbitMQ (its real
# scripts, which the tests call, are under /usr/lib/rabbitmq/bin) and Redis for the scale-out
# tests. Installed with apt-get as root, all missing ones at once.
TEST_TOOLS := \
	"command -v nginx || test -x /usr/sbin/nginx@nginx-light openssl" \
	"command -v promtool@prometheus" \
	"command -v chromium@chromium" \
	"command -v initdb || ls /usr/lib/postgresql/*/bin/initdb@postgresql" \
	"test -x /usr/lib/rabbitmq/bin/rabbitmq-server || command -v rabbitmq-server@rabbitmq-server" \
	"command -v redis-server@redis-server"

test-tools:
	@missing=""; for tool in $(TEST_TOOLS); do \
		sh -c "$${tool%@*}" >/dev/null 2>&1 || missing="$$missing $${tool##*@}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; \
	else \
		echo "missing test tools: install Debian's$$missing as root"; \
	fi

lint: sync
	$(UV) run ruff check src tests benchmarks
	$(UV) run ruff format --check src tests benchmarks
	$(UV) run mypy

format: sync
	$(UV) run ruff check --fix src tests benchmarks
	$(UV) run ruff format src tests benchmarks

# The interface's catalogs: extract every message from the code, then bring each language's
# .po up to date (new messages empty, changed ones fuzzy: translate them and drop the fuzzy
# mark; tests/test_i18n.py fails until every one is translated). No compile step: the bot
# compiles the .po files in memory at start.
LOCALES := src/voicebot/locales
LANGUAGES := en ru

locales: sync
	$(UV) run pybabel extract --project=voicebot --copyright-holder="voicebot contributors" \
		--add-location=file --sort-by-file \
		--add-comments=TRANSLATORS: -k _ -k ngettext:1,2 -k N_ \
		-o $(LOCALES)/messages.pot src/voicebot
	for lang in $(LANGUAGES); do \
		if [ -f $(LOCALES)/$$lang/LC_MESSAGES/messages.po ]; then \
			$(UV) run pybabel update --ignore-obsolete \
				-i $(LOCALES)/messages.pot -d $(LOCALES) -l $$lang || exit 1; \
		else \
			$(UV) run pybabel init -i $(LOCALES)/messages.pot -d $(LOCALES) -l $$lang || exit 1; \
		fi; \
	done

bench: sync
	$(UV) run python benchmarks/engine.py
	$(UV) run python benchmarks/batching.py
	$(UV) run python benchmarks/ingest.py
	$(UV) run python benchmarks/ingest.py --backlog 0 --burst 500 --users 100 --rate 250 \
		--default-limits --no-transcription --output bench-results/admission.md
	$(UV) run python benchmarks/cache.py
	$(UV) run python benchmarks/webhook.py
	$(UV) run python benchmarks/webhook.py --no-transcription --output bench-results/webhook-door.md
	$(UV) run python benchmarks/scale.py

# The admin dashboard's Chart.js, from the npm registry: its UMD build and licence, unchanged,
# with the version and the tarball's integrity noted beside them. Committed: the page works
# offline. Bump CHARTJS and run `make vendor` to refresh it.
CHARTJS := 4.6.1
VENDOR := src/voicebot/web/static/vendor

vendor:
	set -euo pipefail; work=$$(mktemp -d); trap 'rm -rf "$$work"' EXIT; \
	npm pack --silent --json --pack-destination "$$work" chart.js@$(CHARTJS) > "$$work/pack.json"; \
	tar -xzf "$$work"/chart.js-*.tgz -C "$$work"; \
	mkdir -p $(VENDOR); \
	cp "$$work/package/dist/chart.umd.min.js" $(VENDOR)/chart.umd.min.js; \
	cp "$$work/package/LICENSE.md" $(VENDOR)/chart.js.LICENSE.md; \
	python3 -c 'import json, sys; p = json.load(open(sys.argv[1]))[0]; \
		print(p["name"], p["version"], "(npm)", p["integrity"])' \
		"$$work/pack.json" > $(VENDOR)/chart.js.VERSION
