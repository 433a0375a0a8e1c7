# Backroom: the two commands a newcomer runs are `make run` and `make test`.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: run test deps services build lint bench

## make run: build, then validate and render the sample fleet and print a summary per store.
run: deps build
	./target/debug/centralctl profile validate --summary profiles/fleet

## make test: install what the tests need (idempotent), then run every test and lint.
test: deps services
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

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
	$(CARGO) build --release -p backroom-central
	$(CARGO) bench -p backroom-integration
	$(CARGO) bench -p backroom-nodeagent
	$(CARGO) bench -p backroom-vmd
	$(CARGO) bench -p backroom-netd --bench apply
