#!/usr/bin/env bash
# `make demo-guard`: the blast-radius guard (D11) stops Kubernetes issue #141422.
#
# Starts a local control plane with kube-scheduler, the resource-claim controller and one KWOK
# node, node-1, with 30 GPUs of the example driver; runs 30 pods using them in 3 namespaces; runs
# device-taint-eviction with its default flags; then applies one DeviceTaintRule with an empty
# device selector, the mistake of #141422, which taints every device of the cluster. It prints a
# timeline: the guard pauses the rule (status, Warning Event, explain, metrics) and no pod is
# deleted; after `device-taint-eviction resume --accept 30` all 30 pods go. Everything is removed
# at the end.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/dte-demo-guard.XXXXXX")
namespaces=(team-a team-b team-c)
pods=30
rule=everything
# shellcheck source=tests/demo-common.sh
source "$root/tests/demo-common.sh"

start_cluster
dte() { "$root/target/debug/device-taint-eviction" "$@"; }

say "creating the device class and a ResourceSlice with gpu-0..gpu-$((pods - 1)) on node-1"
k apply -f "$root/examples/deviceclass.yaml" >/dev/null
{
	echo '{"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",'
	echo ' "metadata": {"name": "gpu.example.com-node-1"},'
	echo ' "spec": {"driver": "gpu.example.com", "nodeName": "node-1",'
	echo '  "pool": {"name": "node-1", "generation": 1, "resourceSliceCount": 1}, "devices": ['
	for ((i = 0; i < pods; i++)); do
		printf '   {"name": "gpu-%d"}%s\n' "$i" "$( ((i + 1 < pods)) && echo ,)"
	done
	echo ']}}'
} | k apply -f - >/dev/null

say "starting the controller with its default flags (log: controller.log)"
# Started directly, not through dte, so that $! is the controller's own pid.
"$root/target/debug/device-taint-eviction" controller --http-addr 127.0.0.1:0 --leader-elect=false \
	>"$dir/controller.log" 2>&1 &
controller_pid=$!
await "the controller to list everything" 60 grep -q "starting workers" "$dir/controller.log"

say "running $pods pods, each using one GPU, in namespaces ${namespaces[*]}"
for ((i = 0; i < pods; i++)); do
	ns=${namespaces[i % 3]}
	if ((i < 3)); then
		k create namespace "$ns" >/dev/null
		k -n "$ns" create serviceaccount default >/dev/null
		k -n "$ns" apply -f "$root/examples/claim-template.yaml" >/dev/null
	fi
	sed "s/name: gpu-workload$/name: gpu-workload-$i/" "$root/examples/pod.yaml" | k -n "$ns" apply -f - >/dev/null
done
running() {
	[[ $(k get pods -A --field-selector=status.phase=Running -o name | wc -l) -eq $pods ]]
}
await "all $pods pods to run" 120 running
say "$pods pods Running on node-1"

say "the #141422 mistake: a DeviceTaintRule with an empty device selector (every device of the cluster), effect NoExecute"
k apply -f - >/dev/null <<EOF
apiVersion: resource.k8s.io/v1
kind: DeviceTaintRule
metadata:
  name: $rule
spec:
  deviceSelector: {}
  taint:
    key: example.com/maintenance
    effect: NoExecute
EOF
paused() { [[ $(k get devicetaintrule "$rule" -o jsonpath='{.status.conditions[0].reason}') == EvictionPaused ]]; }
await "the guard to pause the rule" 60 paused
say "rule status: $(k get devicetaintrule "$rule" -o jsonpath='{.status.conditions[0].type}={.status.conditions[0].status} {.status.conditions[0].reason}: {.status.conditions[0].message}')"
say "Warning Event on the rule: $(k get events -A --field-selector involvedObject.name=$rule -o jsonpath='{range .items[?(@.reason=="EvictionPaused")]}{.type} {.reason}: {.message}{end}')"
say "log: $(grep -m1 'blast-radius guard tripped' "$dir/controller.log" | cut -c1-240)"
admin=$(sed -n 's/.*admin server listening addr=\([^ ]*\).*/\1/p' "$dir/controller.log")
say "metrics: $(curl -s "http://$admin/metrics" | grep -E '^device_taint_eviction_controller_(guard_tripped\{scope="rule|guard_held_evictions|pod_deletions_total)' | tr '\n' ' ')"
explained=$(dte explain 2>/dev/null)
say "explain: $(grep -c 'paused by the blast-radius guard (' <<<"$explained") pods held; its first rows and what it says of the guard:"
{
	head -4 <<<"$explained"
	grep -v '^NAMESPACE\|^team-' <<<"$explained" | sed '/^$/d' || true
} | sed 's/^/           /'
say "pods deleted so far: $((pods - $(k get pods -A -o name | wc -l))); still running: $(k get pods -A --field-selector=status.phase=Running -o name | wc -l)"

say "the operator looked and accepts the evictions: device-taint-eviction resume --name $rule --accept $pods"
dte resume --name "$rule" --accept "$pods" | sed 's/^/           /'
none_left() { [[ $(k get pods -A -o name | wc -l) -eq 0 ]]; }
await "the $pods pods to be evicted and gone" 120 none_left
say "all $pods pods evicted and gone"
completed() { [[ $(k get devicetaintrule "$rule" -o jsonpath='{.status.conditions[0].reason}') == Completed ]]; }
await "the rule status to report completion" 60 completed
say "rule status: $(k get devicetaintrule "$rule" -o jsonpath='{.status.conditions[0].type}={.status.conditions[0].status} {.status.conditions[0].reason}: {.status.conditions[0].message}')"
say "done; cleaning up"
