#!/usr/bin/env bash
# make fuzz: runs each fuzz target of fuzz/ for FUZZ_SECONDS (default 600) with libFuzzer.
# Needs a nightly toolchain and cargo-fuzz (installed from crates.io on first use).
#
# The checked-in corpus (fuzz/corpus/TARGET: seeds and every input that ever found a bug) is read,
# never written; what a run finds new goes to target/fuzz/corpus/TARGET, a crash to
# fuzz/artifacts/TARGET/ (copy it into fuzz/corpus/TARGET once fixed: `cargo test` replays that
# directory on stable, see src/fuzz_targets.rs).
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 600)
#   FUZZ_TARGETS   space-separated targets (default: every target in fuzz/Cargo.toml)
#   FUZZ_JOBS      parallel fuzzing processes per target (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-600}
jobs=${FUZZ_JOBS:-1}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || {
	echo "fuzz: FUZZ_SECONDS must be a positive whole number, got '$seconds'" >&2
	exit 2
}
if ! cargo +nightly --version >/dev/null 2>&1; then
	echo "fuzz: needs a nightly toolchain: rustup toolchain install nightly" >&2
	exit 2
fi
command -v cargo-fuzz >/dev/null || {
	echo "fuzz: installing cargo-fuzz (once)" >&2
	cargo install --locked cargo-fuzz
}
targets=${FUZZ_TARGETS:-$(cd fuzz && cargo +nightly fuzz list)}
cd fuzz
echo "fuzz: building the targets (release, with sanitizer coverage)" >&2
cargo +nightly fuzz build -O
status=0
for t in $targets; do
	mkdir -p "../target/fuzz/corpus/$t"
	echo "fuzz: $t for ${seconds}s" >&2
	if cargo +nightly fuzz run -O "$t" "../target/fuzz/corpus/$t" "corpus/$t" -- \
		-max_total_time="$seconds" -jobs="$jobs" -workers="$jobs" -print_final_stats=1 \
		>"../target/fuzz/$t.log" 2>&1; then
		echo "fuzz: $t: no failure ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "../target/fuzz/$t.log" | awk '{s+=$2} END {print s+0}') inputs run)" >&2
	else
		status=1
		echo "fuzz: $t FAILED; see target/fuzz/$t.log and fuzz/artifacts/$t/" >&2
	fi
done
exit $status
