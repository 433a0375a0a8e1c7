# Backroom: the two commands a newcomer runs are `make run` and `make test`.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: run stop test deps services build lint bench chaos

## make run: a working HQ (central) and one store node (netd, vmd, nodeagent) on this machine,
## the sample fleet pushed, the store enrolled; prints where to look. `make stop` ends it.
run: deps services build
	./target/debug/centralctl profile validate --summary profiles/fleet
	scripts/run/up

## make stop: stop what `make run` started (by pid) and remove what it made.
stop:
	scripts/run/down

## make test: install what the tests need (idempotent), then run every test and lint.
test: deps services
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --no-fail-fast

deps:
	scripts/install-deps

services:
	scripts/start-services

build:
	$(CARGO) build --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## make bench: benchmarks; each prints ratios against a baseline measured in the same run.
bench: deps services
	$(CARGO) build --release --bins
	$(CARGO) build --profile dist --bin netd --bin vmd --bin nodeagent
	$(CARGO) bench -p backroom-integration
	$(CARGO) bench -p backroom-nodeagent
	$(CARGO) bench -p backroom-vmd
	$(CARGO) bench -p backroom-netd --bench apply

## make chaos: central's abuse suite for longer (BACKROOM_ABUSE_SECONDS, default 300): every RPC
## fed hostile messages while `store list` is measured; prints its p50/p99. Then power loss of
## every state file (BACKROOM_CHAOS_STATE_ROUNDS per daemon, default 20), with its figures.
chaos:
	$(CARGO) test -p backroom-central --test abuse -- --ignored --nocapture abuse_long
	$(CARGO) build --bins
	BACKROOM_CHAOS_STATE_ROUNDS=$${BACKROOM_CHAOS_STATE_ROUNDS:-20} \
		$(CARGO) test -p backroom-integration --test chaos_state -- --nocapture
