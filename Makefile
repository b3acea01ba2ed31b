# Every target that needs Python first builds .venv from the pinned constraints, so `make run`
# and `make test` work on a fresh clone with only python3 (>= 3.11) and make installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Settings of `make run` (and `make backup`, which talks to the store it runs). Not exported
# globally: tests start their own processes with their own settings.
# Each is NAME ?= VALUE where an empty NAME (`STORE_DATA_DIR= make run`, from the environment or
# the command line) counts as unset too, as every setting's does in the docs: `?=` kept it
# empty (QA: the store then ran without persistence, and an empty RUN_DIR put the socket,
# metrics and supervisord's files at /). No $(eval): it would read a `#` in a path as a comment.
# $(value): the setting as given; $($(1)) would read a `$d` in a path as a make variable.
or_default = $(if $(strip $(value $(1))),$(value $(1)),$(2))
override PORT := $(call or_default,PORT,8000)
override WEB_CONCURRENCY := $(call or_default,WEB_CONCURRENCY,2)
override GRACEFUL_TIMEOUT := $(call or_default,GRACEFUL_TIMEOUT,30)
# Run-time files: supervisord's log and pid file, the store's socket, job results, metrics
# (deploy/supervise.py creates the directory, or refuses one it cannot use in one JSON line).
override RUN_DIR := $(call or_default,RUN_DIR,$(CURDIR)/run)
override STORE_SOCKET := $(call or_default,STORE_SOCKET,$(RUN_DIR)/store.sock)
override STORE_DATA_DIR := $(call or_default,STORE_DATA_DIR,$(CURDIR)/data)
override STORE_FSYNC := $(call or_default,STORE_FSYNC,everysec)
override ENV := $(call or_default,ENV,development)
# Prometheus multiprocess files of the gunicorn workers (emptied at each start by the entrypoint).
override PROMETHEUS_MULTIPROC_DIR := $(call or_default,PROMETHEUS_MULTIPROC_DIR,$(RUN_DIR)/prometheus)
# A value as one shell word: in single quotes, each ' written '\'' (QA: a clone or RUN_DIR
# whose path held a space, or a password with an apostrophe, broke the command line).
shq = '$(subst ','\'',$(1))'
RUN_ENV = PORT=$(call shq,$(PORT)) HOST=$(call shq,$(HOST)) \
	WEB_CONCURRENCY=$(call shq,$(WEB_CONCURRENCY)) RUN_DIR=$(call shq,$(RUN_DIR)) \
	GRACEFUL_TIMEOUT=$(call shq,$(GRACEFUL_TIMEOUT)) \
	STORE_SOCKET=$(call shq,$(STORE_SOCKET)) STORE_DATA_DIR=$(call shq,$(STORE_DATA_DIR)) \
	STORE_FSYNC=$(call shq,$(STORE_FSYNC)) ENV=$(call shq,$(ENV)) \
	PROMETHEUS_MULTIPROC_DIR=$(call shq,$(PROMETHEUS_MULTIPROC_DIR))
# Development only: an administrator, so `make seed` works out of the box. Production refuses
# this password (api/settings.py); there, set your own ADMIN_EMAIL/ADMIN_PASSWORD or none.
ifeq ($(ENV),development)
override ADMIN_EMAIL := $(call or_default,ADMIN_EMAIL,admin@example.com)
override ADMIN_PASSWORD := $(call or_default,ADMIN_PASSWORD,dev-only-admin-password)
endif
# $(value): as given, where $(ADMIN_PASSWORD) would read a `$w` in it as a make variable
# (QA: the admin was created with another password than the operator's, silently). The same
# for `make run` and for `make seed` and `make load`, which log in as that admin.
ADMIN_ENV = ADMIN_EMAIL=$(call shq,$(value ADMIN_EMAIL)) \
	ADMIN_PASSWORD=$(call shq,$(value ADMIN_PASSWORD))
RUN_ENV += $(ADMIN_ENV)
# `make seed`: the sample data's size (loadtests/seed.py; larger for benchmarks).
SEED_USERS ?= 100
SEED_ORDERS ?= 1000

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast lint format clean bench-store bench-api bench-durability backup \
	docker-build docker-run docker-stop

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## create .venv and install the pinned dependencies

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is required (found: $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

# This machine only, unless HOST says otherwise (HOST=0.0.0.0): in development `make run` has
# an administrator whose password is in this file. (`make load` reads HOST as a URL: not global.)
run: HOST := $(or $(HOST),127.0.0.1)
run: install ## start the store and the API (gunicorn) on $HOST:$PORT in the foreground; Ctrl-C stops both
	@exec env $(RUN_ENV) $(BIN)/python deploy/supervise.py

.PHONY: seed
seed: install ## load sample data into the running service (make run): SEED_USERS, SEED_ORDERS
	@env $(ADMIN_ENV) $(BIN)/python -m loadtests.seed \
		--base-url http://localhost:$(PORT) --users $(SEED_USERS) --orders $(SEED_ORDERS)

.PHONY: dev
dev: ## install, format, lint, test, then run (one after the other; stops at the first failure)
	$(MAKE) install
	$(MAKE) format
	$(MAKE) lint
	$(MAKE) test
	$(MAKE) run

# Test processes (pytest-xdist): each runs whole files (--dist loadfile, so a module's own
# stack starts once) and its own session stack. Much of the suite waits on real processes
# (starts, stops, timeouts), so 2 halve the time even on 2 cores; TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

test: install ## run the whole test suite (unit and integration, real processes), with coverage
	@$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest -q -n $(TEST_WORKERS) --dist loadfile
	@$(BIN)/coverage combine -q
	$(BIN)/coverage report

test-fast: install ## unit tests only (no gunicorn)
	$(BIN)/pytest -q -m "not integration"

lint: install ## ruff format --check, ruff check, mypy
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy api storeserver

format: install ## ruff format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

backup: install ## snapshot the running store (make run) and copy it to backups/<timestamp>/
	@$(BIN)/python -m storeserver.backup --address $(call shq,$(STORE_SOCKET)) --dest backups

bench-store: install ## store CPU per op and throughput, side by side with redis-server
	$(BIN)/python -m loadtests.bench_store

bench-durability: install ## insert CPU per fsync policy vs redis AOF; 1M-record snapshot, stall, restart
	$(BIN)/python -m loadtests.bench_durability

.PHONY: bench-data
bench-data: install ## 1M orders: aggregate, CSV export (rows/s, RSS, store stall) vs PostgreSQL COPY; CSV import
	$(BIN)/python -m loadtests.bench_data

bench-api: install ## GET /users/{id} through gunicorn vs a minimal in-process FastAPI app
	$(BIN)/python -m loadtests.bench_api

.PHONY: bench-dump-abort
bench-dump-abort: install ## an API worker's RSS across NDJSON dumps whose clients leave mid-way
	$(BIN)/python -m loadtests.dump_abort_rss

.PHONY: bench-jobs
bench-jobs: install ## 500k-row CSV import jobs while single-record requests are probed (p95 < 100 ms?)
	$(BIN)/python -m loadtests.bench_jobs

.PHONY: bench-join
bench-join: install ## join on an indexed generic field vs table size (10k..1M) and result size; index build stall
	$(BIN)/python -m loadtests.bench_join

# make load: locust headless (loadtests/locustfile.py) with the PRD's thresholds; without HOST it
# starts the service here with RATE_LIMIT=LOAD_RATE_LIMIT and BCRYPT_ROUNDS=LOAD_BCRYPT_ROUNDS
# (why: loadtests/load.py). With HOST (a URL) the reporting admin logs in as ADMIN_EMAIL /
# ADMIN_PASSWORD: the development admin's unless set, as for `make seed`.
USERS ?= 100
SPAWN_RATE ?= 20
RUN_TIME ?= 60s
LOAD_RATE_LIMIT ?= 1000000/minute
LOAD_BCRYPT_ROUNDS ?= 4
.PHONY: load
load: install ## locust USERS (100) for RUN_TIME (60s) with thresholds; HOST=url targets a deployment
	@env $(ADMIN_ENV) \
		$(BIN)/python -m loadtests.load --users $(USERS) --spawn-rate $(SPAWN_RATE) \
		--run-time $(RUN_TIME) --rate-limit $(call shq,$(LOAD_RATE_LIMIT)) \
		--bcrypt-rounds $(LOAD_BCRYPT_ROUNDS) $(if $(HOST),--host $(call shq,$(HOST)))

.PHONY: soak
soak: install ## 6 minutes at moderate load; store and worker RSS sampled, plotted, judged flat or not
	$(BIN)/python -m loadtests.soak

.PHONY: bench
bench: install ## every benchmark, then docs/BENCHMARKS.md with plots (BENCH_FLAGS=--soak, --quick)
	$(BIN)/python -m loadtests.bench_all $(BENCH_FLAGS)

docker-build: ## build the image (docker compose build)
	docker compose build

docker-run: ## start store + api with docker compose (needs JWT_SECRET, see .env.example)
	docker compose up -d --wait

docker-stop: ## stop the compose stack (volumes are kept)
	docker compose down

clean: ## remove the venv, caches and run-time files (not the data directory)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov run *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
