#!/usr/bin/env bash
# `make demo`: a device fails, the controller evicts the pod that uses it.
#
# Starts a local control plane (etcd, kube-apiserver, kube-scheduler and the upstream
# resource-claim controller, built from the Kubernetes Go modules) with one node, node-1, whose
# kubelet KWOK simulates; runs device-taint-eviction against it, creates a device, a claim template
# and a pod from examples/, taints the device and prints a timeline: the pod Running on node-1,
# Terminating once evicted, then gone. Everything is removed at the end.
#
# The first run on a machine builds the control plane and KWOK from source (see
# tests/controlplane/README.md); their progress is shown.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/dte-demo.XXXXXX")
ns=demo
# shellcheck source=tests/demo-common.sh
source "$root/tests/demo-common.sh"

start_cluster
say "node-1 is $(k get node node-1 -o jsonpath='{range .status.conditions[?(@.type=="Ready")]}Ready={.status} ({.reason}){end}'), its kubelet simulated by KWOK"

# follow_pod: prints each change of the pod's state (phase, Terminating, gone) until it is gone.
follow_pod() {
	local last='' state seen=false
	while :; do
		if state=$(k -n "$ns" get pod gpu-workload -o jsonpath='{.status.phase}{"|"}{.spec.nodeName}{"|"}{.metadata.deletionTimestamp}' 2>/dev/null); then
			seen=true
			IFS='|' read -r phase node deleting <<<"$state"
			if [[ -n $deleting ]]; then
				state="Terminating (deletionTimestamp $deleting)"
			elif [[ -n $node ]]; then
				state="$phase on $node"
			else
				state="$phase, not scheduled yet"
			fi
		elif $seen; then
			say "pod $ns/gpu-workload: gone"
			return
		else
			state=
		fi
		[[ $state == "$last" || -z $state ]] || say "pod $ns/gpu-workload: $state"
		last=$state
		sleep 0.2
	done
}

say "starting the controller (log: controller.log)"
"$root/target/debug/device-taint-eviction" controller --http-addr 127.0.0.1:0 --leader-elect=false \
	--log-level info,device_taint_eviction=debug >"$dir/controller.log" 2>&1 &
controller_pid=$!
await "the controller to list everything" 60 grep -q "starting workers" "$dir/controller.log"

say "creating the device class, a ResourceSlice with gpu-0..gpu-3 on node-1, a claim template and a pod"
k create namespace "$ns" >/dev/null
k -n "$ns" create serviceaccount default >/dev/null
k apply -f "$root/examples/deviceclass.yaml" -f "$root/examples/resourceslice.yaml" >/dev/null
k -n "$ns" apply -f "$root/examples/claim-template.yaml" -f "$root/examples/pod.yaml" >/dev/null
follow_pod &
follower_pid=$!
reserved() { [[ -n $(k -n "$ns" get resourceclaims -o jsonpath='{.items[0].status.reservedFor[0].uid}') ]]; }
await "the scheduler to allocate a device" 60 reserved
device=$(k -n "$ns" get resourceclaims -o jsonpath='{.items[0].status.allocation.devices.results[0].device}')
running() { [[ $(k -n "$ns" get pod gpu-workload -o jsonpath='{.status.phase}') == Running ]]; }
await "the pod to run" 60 running
say "pod $ns/gpu-workload runs on $(k -n "$ns" get pod gpu-workload -o jsonpath='{.spec.nodeName}'), using device $device"

say "device gpu-0 fails: applying examples/devicetaintrule-noexecute.yaml (key gpu.example.com/unhealthy, effect NoExecute)"
k apply -f "$root/examples/devicetaintrule-noexecute.yaml" >/dev/null
await "the eviction to be scheduled" 30 grep -q "pod eviction scheduled" "$dir/controller.log"
at=$(grep -m1 "pod eviction scheduled" "$dir/controller.log" | sed -n 's/.* at=\([^ ]*\).*/\1/p')
say "eviction scheduled for $at (no toleration: at once)"
deleting() { [[ -n $(k -n "$ns" get pod gpu-workload -o jsonpath='{.metadata.deletionTimestamp}' 2>/dev/null) ]] || ! k -n "$ns" get pod gpu-workload; }
await "the pod to be evicted" 30 deleting
say "pod evicted: $(k -n "$ns" get pod gpu-workload -o jsonpath='{range .status.conditions[?(@.type=="DisruptionTarget")]}condition {.type}={.status} ({.reason}: {.message}){end}' 2>/dev/null)"
# KWOK ends the pod's graceful termination (within its 30s grace period) and the pod is removed.
gone() { ! k -n "$ns" get pod gpu-workload; }
await "the pod to be gone" 60 gone
wait "$follower_pid"
follower_pid=
say "events: $(k -n "$ns" get events --field-selector involvedObject.name=gpu-workload -o jsonpath='{range .items[?(@.reason=="DeviceTaintManagerEviction")]}{.reason}: {.message}{end}')"
completed() { [[ $(k get devicetaintrule gpu-0-unhealthy -o jsonpath='{.status.conditions[0].reason}') == Completed ]]; }
await "the rule status to report completion" 30 completed
say "rule status: $(k get devicetaintrule gpu-0-unhealthy -o jsonpath='{.status.conditions[0].type}={.status.conditions[0].status} {.status.conditions[0].reason}: {.status.conditions[0].message}')"
say "metrics: $(curl -s "http://$(sed -n 's/.*admin server listening addr=\([^ ]*\).*/\1/p' "$dir/controller.log")/metrics" | grep '^device_taint_eviction_controller_pod_deletions_total')"
say "done; cleaning up"
