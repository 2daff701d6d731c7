#!/usr/bin/env bash
# make soak: runs the scenario, PodGroup, fault, leader, restart, re-list and scale tests again and again on
# one local control plane, and writes a table of runs and failures per test. A failed run's whole
# output is kept; a passed one's is thrown away.
#
# Environment:
#   SOAK_RUNS       how many rounds (default 200)
#   SOAK_TESTS      test binaries, space-separated (default: scenarios podgroups api_faults leader
#                   restart relist modes scale bad_input fault_proxy controlplane_faults; the last starts
#                   control planes of its own, which DTE_OWN_CONTROLPLANES=1 allows here)
#   SOAK_CPU_LOAD   1: a second process keeps one core busy for the whole soak (default 0)
#   SOAK_DIR        where the report and failure logs go (default target/soak)
#   SOAK_RUN_TIMEOUT seconds one test binary may take before it counts as a failure (default 900)
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${SOAK_RUNS:-200}
tests=${SOAK_TESTS:-scenarios podgroups api_faults leader restart relist modes scale bad_input fault_proxy controlplane_faults guard}
load=${SOAK_CPU_LOAD:-0}
out=${SOAK_DIR:-target/soak}
run_timeout=${SOAK_RUN_TIMEOUT:-900}
[[ $runs =~ ^[1-9][0-9]*$ ]] || {
	echo "soak: SOAK_RUNS must be a positive whole number, got '$runs'" >&2
	exit 2
}

mkdir -p "$out/failures"
out=$(cd "$out" && pwd -P)
rm -f "$out"/failures/*.log "$out/results.tsv"

echo "soak: building the control plane (cached) and the test binaries" >&2
tests/controlplane/build.sh >/dev/null
targets=()
for t in $tests; do targets+=(--test "$t"); done
declare -A exe
while IFS=$'\t' read -r name path; do exe[$name]=$path; done < <(
	cargo test --locked --no-run --message-format=json "${targets[@]}" 2>"$out/build.log" |
		python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"], sep="\t")
'
)
for t in $tests; do
	[[ -n ${exe[$t]:-} ]] || {
		echo "soak: no test binary '$t' (see tests/*.rs); the build said:" >&2
		tail -20 "$out/build.log" >&2
		exit 2
	}
done

# One control plane for the whole soak; the namespace controller cleans up what the tests leave.
cp_dir=$(mktemp -d "${TMPDIR:-/tmp}/dte-soak.XXXXXX")
loader=
cleanup() {
	[[ -z $loader ]] || kill "$loader" 2>/dev/null || true
	tests/controlplane/down.sh "$cp_dir" >/dev/null 2>&1 || true
	rm -rf "$cp_dir"
}
trap cleanup EXIT
# On 1.37 it also serves PodGroups, for tests/podgroups.rs (which skips where they are not served).
up_flags=(--controllers=namespace-controller)
# shellcheck disable=SC2054 # the commas belong to the flag's value
case ${CONTROLPLANE_K8S_VERSION:-1.37} in
1.37) up_flags+=(--feature-gates=DRAWorkloadResourceClaims=true,GenericWorkload=true
	--runtime-config=scheduling.k8s.io/v1beta1=true) ;;
esac
tests/controlplane/up.sh "${up_flags[@]}" "$cp_dir" >/dev/null
export DTE_TEST_KUBECONFIG=$cp_dir/kubeconfig KUBECONFIG=$cp_dir/kubeconfig
# The soak's control plane is local too, so tests that kill components of a control plane of their
# own (controlplane_faults) may start one beside it.
export DTE_OWN_CONTROLPLANES=1
if [[ $load == 1 ]]; then
	sh -c 'while :; do :; done' &
	loader=$!
	echo "soak: CPU load on (pid $loader)" >&2
fi

start=$(date +%s)
for ((run = 1; run <= runs; run++)); do
	for t in $tests; do
		log="$out/failures/$t-run$run.log"
		t0=$(date +%s.%N)
		if timeout --kill-after=10 "$run_timeout" "${exe[$t]}" >"$log" 2>&1; then
			result=pass
		else
			result=fail
		fi
		# How many tests ran, so that a binary that silently ran none shows up in the table.
		ran=$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$log" | awk '{s+=$1+$2} END {print s+0}')
		[[ $result == fail ]] || rm -f "$log"
		secs=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
		failed_tests=$(grep -oE '^test [^ ]+ \.\.\. FAILED' "$log" 2>/dev/null | awk '{print $2}' | paste -sd, - || true)
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$t" "$result" "$secs" "${failed_tests:--}" "$ran" >>"$out/results.tsv"
	done
	elapsed=$(($(date +%s) - start))
	fails=$(awk -F'\t' '$3 == "fail"' "$out/results.tsv" | wc -l)
	echo "soak: round $run/$runs done in ${elapsed}s total, $fails failed binary runs so far" >&2
done

python3 - "$out" "$runs" "$load" <<'PY'
import collections, json, pathlib, sys
out, runs, load = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
rows = [l.split("\t") for l in (out / "results.tsv").read_text().splitlines()]
per = collections.OrderedDict()
for run, test, result, secs, failed, ran in rows:
    p = per.setdefault(test, {"runs": 0, "failures": 0, "tests_run": 0, "seconds": [], "failed_tests": collections.Counter(), "logs": []})
    p["runs"] += 1
    p["tests_run"] += int(ran)
    p["seconds"].append(float(secs))
    if result == "fail":
        p["failures"] += 1
        p["logs"].append(f"failures/{test}-run{run}.log")
        for name in failed.split(","):
            if name != "-":
                p["failed_tests"][name] += 1
lines = [f"# Soak: {runs} rounds{' under CPU load' if load else ''}", "",
         "| test binary | runs | failures | tests run | median s | max s | failed tests |", "|---|---|---|---|---|---|---|"]
for test, p in per.items():
    s = sorted(p["seconds"])
    failed = ", ".join(f"{n} x{c}" for n, c in p["failed_tests"].items()) or "-"
    lines.append(f"| {test} | {p['runs']} | {p['failures']} | {p['tests_run']} | {s[len(s)//2]:.1f} | {s[-1]:.1f} | {failed} |")
total = sum(p["failures"] for p in per.values())
lines += ["", f"{total} failed binary runs; logs of each failure: " + (", ".join(l for p in per.values() for l in p["logs"]) or "none")]
(out / "report.md").write_text("\n".join(lines) + "\n")
(out / "report.json").write_text(json.dumps({"rounds": runs, "cpu_load": load, "tests": {
    t: {k: v for k, v in p.items() if k != "seconds"} | {"median_seconds": sorted(p["seconds"])[len(p["seconds"])//2]}
    for t, p in per.items()}}, indent=2) + "\n")
# Why each failed run failed, ahead of the table: the panic line and the first lines of its
# message (the whole log is in failures/), so that a CI log's tail says it.
for p in per.values():
    for log in p["logs"]:
        text = (out / log).read_text(errors="replace").splitlines()
        print(f"## {log}")
        shown = 0
        for i, line in enumerate(text):
            if "panicked at" in line and shown < 3:
                print("\n".join(l[:300] for l in text[i:i + 6]))
                shown += 1
        if not shown:
            print("\n".join(l[:300] for l in text[-15:]))
        print()
print("\n".join(lines))
PY
# The closing line counts binary runs, the form CI reads.
passed=$(awk -F'\t' '$3 == "pass"' "$out/results.tsv" | wc -l)
failed=$(awk -F'\t' '$3 == "fail"' "$out/results.tsv" | wc -l)
echo "soak: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
