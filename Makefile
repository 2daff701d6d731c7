# Every target is what CI runs (see .ci/run); nothing here needs a manual install step.
CARGO ?= cargo

.PHONY: unit test test-compat lint fmt chart-check image image-check ci demo demo-guard soak fuzz bench bench-smoke bench-scale

## unit: the tests that need nothing but cargo (no control plane, no cluster): the library's unit
## and property tests, the actuator against a scripted API, doc tests, and one pass of each
## decision-core benchmark.
unit:
	$(CARGO) test --locked --lib
	$(CARGO) test --locked --doc
	$(CARGO) bench --locked --bench core -- --test

## test: the whole test suite (unit, property and integration tests against a local control plane).
## The control plane binaries and KWOK are built (or found in the cache) first, with their progress
## shown; see tests/controlplane/README.md.
test:
	tests/controlplane/build.sh >/dev/null
	tests/controlplane/build-kwok.sh >/dev/null
	$(CARGO) test --locked --all-targets

## test-compat: the integration suite on real 1.35, 1.36 and 1.37 control planes, each with the gates
## and runtime config README's compatibility table names (not in CI: each older control plane is a
## one-time build of several minutes). One minor: bash tests/compat.sh 1.36.
test-compat:
	bash tests/compat.sh

## lint: formatting and clippy, warnings are errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## fmt: format the code.
fmt:
	$(CARGO) fmt --all

## chart-check: lint, render and schema-validate the Helm chart and examples/ (no cluster needed;
## installs helm and the validators into ~/.cache/device-taint-eviction/tools on first use).
chart-check:
	bash tests/chart/check.sh

## image: the container image without a Docker engine: the static binary built on the host, packaged
## with the Dockerfile's runtime stage by podman, saved as an OCI archive at
## target/image/device-taint-eviction.tar (`kind load image-archive` takes it).
image:
	bash tests/image/build.sh >/dev/null

## image-check: build the image and run it with podman against a local control plane: non-root,
## read-only root filesystem, ready, evicts a pod, exits 0 on SIGTERM. Needs root.
image-check:
	bash tests/image/check.sh

## ci: everything CI checks.
ci: lint chart-check test image-check

## demo: start a local control plane, taint a device, watch the pod go, clean up.
demo:
	bash tests/demo.sh

## demo-guard: the blast-radius guard (D11) on a local control plane: 30 running pods, one rule
## with an empty selector, the guard pauses it, `device-taint-eviction resume` lets the pods go.
demo-guard:
	bash tests/demo-guard.sh

## soak: the scenario, PodGroup, fault (API, control plane, bad input, proxy), leader, restart,
## re-list, mode and scale tests SOAK_RUNS times (default 200) on one local control plane;
## SOAK_CPU_LOAD=1 keeps a core busy meanwhile. Writes
## target/soak/report.md (runs and failures per test) and keeps each failed run's log.
soak:
	bash tests/soak.sh

## fuzz: each fuzz target of fuzz/ for FUZZ_SECONDS (default 600) with libFuzzer (nightly). The
## checked-in corpus is replayed on stable by `make unit` and `make test`.
fuzz:
	bash tests/fuzz.sh

## bench: bulk eviction side by side, fairly (benches/bulk.rs): a DELETE-only client, a
## minimal-semantics client, this controller and kube-controller-manager's
## device-taint-eviction-controller on copies of one populated control plane, observed by watches
## from a nice-19 process, BENCH_ROUNDS rounds (default 5) after a warm-up in random order,
## BENCH_PODS pods (default 10000). Writes target/bench/bulk.json and target/bench/bulk.md.
bench:
	tests/controlplane/build.sh >/dev/null
	$(CARGO) bench --locked --bench bulk

## bench-scale: a large cluster with few devices (benches/bulk/scale.rs): BENCH_PODS pods (default
## 50000), a tenth with a device; per round (BENCH_ROUNDS, default 3) this controller and
## kube-controller-manager each start on a copy of it: start-up to the first eviction, 20 single
## taints (rule created to pod deleted), RSS. Writes target/bench/scale.json and scale.md.
bench-scale:
	tests/controlplane/build.sh >/dev/null
	BENCH_SCALE=1 $(CARGO) bench --locked --bench bulk

## bench-smoke: one 300-pod round of `make bench` without warm-up and one of `make bench-scale`,
## so the benchmarks cannot rot (CI runs it; their figures are printed, not asserted). Debug builds
## of the harness and of this controller (cargo builds the binary for the bench): an optimized
## build would add a quarter of an hour to CI for figures nobody reads.
SMOKE_BIN = $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug/device-taint-eviction
bench-smoke:
	tests/controlplane/build.sh >/dev/null
	BENCH_OURS_BIN=$(SMOKE_BIN) BENCH_PODS=300 BENCH_ROUNDS=1 BENCH_WARMUP=0 $(CARGO) test --locked --bench bulk -- --bench
	BENCH_OURS_BIN=$(SMOKE_BIN) BENCH_SCALE=1 BENCH_PODS=300 BENCH_ROUNDS=1 $(CARGO) test --locked --bench bulk -- --bench
