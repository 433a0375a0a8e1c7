# Backroom: the two commands a newcomer runs are `make run` and `make test`.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: run stop test deps services build lint bench chaos console image debs

## make run: a working HQ (central) and one store node (netd, vmd, nodeagent) on this machine,
## the sample fleet pushed, the store enrolled; prints where to look. `make stop` ends it.
run: deps services build
	./target/debug/centralctl profile validate --summary profiles/fleet
	scripts/run/up

## make console: the recovery console of `make run`'s store (a code: centralctl store console-code).
console:
	scripts/run/console

## make stop: stop what `make run` started (by pid) and remove what it made.
stop:
	scripts/run/down

## make test: install what the tests need (idempotent), then run every test and lint.
test: deps services
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --no-fail-fast

## make image: the store OS image (images/out/backroom-store.img, .zst, the root slot, SHA256SUMS)
## from Debian 12 packages and our .debs; skipped when its inputs did not change.
image: deps
	images/build.sh images/out

## make debs: backroom-node and backroom-central .deb files in images/out/debs.
debs:
	images/debs.sh images/out/debs

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

## make chaos: the fault-and-abuse suite, long: kill -9 of every daemon during applies
## (BACKROOM_CHAOS_KILLS, default 120), power loss of every state file (BACKROOM_CHAOS_STATE_ROUNDS,
## default 200), central away for a day, fuzzing of the profile parser and the protobuf decoders
## (BACKROOM_CHAOS_FUZZ_SECS per target, default 60) and central's abuse suite
## (BACKROOM_ABUSE_SECONDS, default 300). Prints one table of figures (also target/chaos-table.md).
CHAOS_TABLE := $(CURDIR)/target/chaos-table.md
chaos: deps services build
	@mkdir -p target && rm -f $(CHAOS_TABLE)
	BACKROOM_CHAOS_TABLE=$(CHAOS_TABLE) BACKROOM_CHAOS_KILLS=$${BACKROOM_CHAOS_KILLS:-120} \
	  BACKROOM_CHAOS_STATE_ROUNDS=$${BACKROOM_CHAOS_STATE_ROUNDS:-200} \
	  BACKROOM_CHAOS_FUZZ_SECS=$${BACKROOM_CHAOS_FUZZ_SECS:-60} \
	  $(CARGO) test -p backroom-integration --test chaos_kill --test chaos_state \
	    --test chaos_central_away --test chaos_fuzz -- --nocapture --test-threads 1
	BACKROOM_CHAOS_TABLE=$(CHAOS_TABLE) $(CARGO) test -p backroom-central --test abuse -- \
	  --ignored --nocapture abuse_long
	@printf '\n%s\n\n| case | scale | what held |\n|---|---|---|\n' "make chaos: figures ($$(date -u +%F), seed and settings above)"
	@cat $(CHAOS_TABLE)
