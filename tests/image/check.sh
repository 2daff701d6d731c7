#!/usr/bin/env bash
# `make image-check`: the container image, run with podman against a local control plane.
#
# Builds the image (`make image`, tests/image/build.sh), loads it back from its OCI archive and
# checks that:
#   - it holds nothing but the binary, the CA bundle, /etc/passwd and /etc/group;
#   - run as the chart runs it (read-only root filesystem, no capabilities, the kubeconfig mounted
#     read-only, no --user: the image's own USER), the process is uid/gid 65532;
#   - the controller becomes ready and evicts a pod: a pod using a device runs on a KWOK node, the
#     device is tainted, the pod is evicted and gone;
#   - it exits 0 on SIGTERM (podman stop).
#
# Needs root (podman with the runc runtime); installs podman, buildah and runc when missing (apt).
# Environment: IMAGE_CHECK_KEEP=1 keeps the work directory (the path is printed).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/dte-image-check.XXXXXX")
chmod 755 "$work"
container=dte-image-check-$$
ns='image-check'
started=false

say() { printf 'image-check: %s\n' "$*"; }
fail() {
	say "FAILED: $*" >&2
	if $started; then podman logs "$container" >"$work/controller.log" 2>&1 || true; fi
	for log in "$work"/*.log "$work"/controlplane/logs/kwok.log; do
		[[ -s $log ]] || continue
		echo "--- $(basename "$log") ---" >&2
		tail -30 "$log" >&2
	done
	exit 1
}
cleanup() {
	! $started || podman rm --force --time 0 "$container" >/dev/null 2>&1 || true
	"$root/tests/controlplane/down.sh" "$work/controlplane" >/dev/null 2>&1 || true
	if [[ -n ${IMAGE_CHECK_KEEP:-} ]]; then
		say "kept $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT

# await DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds or the deadline passes.
await() {
	local what=$1 deadline=$((SECONDS + $2))
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || fail "timed out waiting for $what"
		sleep 0.2
	done
}

[[ $(id -u) == 0 ]] || fail "needs root (podman with the runc runtime)"

# --- the image -----------------------------------------------------------------------------------
archive=$("$root/tests/image/build.sh" 2> >(sed 's/^/  /' >&2)) || fail "make image"
image=$(podman load --quiet --input "$archive" | sed -n 's/^Loaded image[^:]*: //p' | tail -1)
[[ -n $image ]] || fail "podman load of $archive named no image"
say "loaded $image from $archive"

user=$(podman image inspect --format '{{.Config.User}}' "$image")
[[ $user == 65532:65532 ]] || fail "the image's user is '$user', not 65532:65532"
podman create --name "$container-files" "$image" >/dev/null
files=$(podman export "$container-files" | tar -t | grep -v '/$' | sort | tr '\n' ' ')
podman rm "$container-files" >/dev/null
expected="device-taint-eviction etc/group etc/passwd etc/ssl/certs/ca-certificates.crt "
[[ $files == "$expected" ]] || fail "the image holds '$files', expected '$expected'"
say "the image holds only: $files(user $user)"

# --- a control plane with a node whose kubelet KWOK plays -----------------------------------------
say "starting a local control plane with a KWOK node"
"$root/tests/controlplane/up.sh" --with-scheduler --controllers=resource-claim-controller --kwok-nodes=1 \
	"$work/controlplane" >"$work/up.log" 2>&1 || fail "tests/controlplane/up.sh"
# Readable by the image's user, mounted read-only.
install -m 0444 "$work/controlplane/kubeconfig" "$work/kubeconfig"
kubectl=$("$root/tests/controlplane/build.sh" --print-dir)/kubectl
k() { "$kubectl" --kubeconfig="$work/kubeconfig" "$@"; }

# --- the controller, run from the image ----------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# runc: crun is not usable on every machine. Explicit ulimits, within this shell's hard limits:
# podman's defaults are refused on some machines ("error setting rlimits").
hard_nofile=$(ulimit -Hn)
[[ $hard_nofile == unlimited || $hard_nofile -gt 65536 ]] && hard_nofile=65536
hard_nproc=$(ulimit -Hu)
[[ $hard_nproc == unlimited || $hard_nproc -gt 8192 ]] && hard_nproc=8192
podman run --detach --name "$container" --runtime runc --network host \
	--read-only --cap-drop ALL --security-opt no-new-privileges \
	--ulimit "nofile=$hard_nofile:$hard_nofile" --ulimit "nproc=$hard_nproc:$hard_nproc" \
	--volume "$work/kubeconfig:/kubeconfig:ro" \
	"$image" controller --kubeconfig /kubeconfig --leader-elect=false --http-addr "127.0.0.1:$port" \
	>"$work/podman-run.log" 2>&1 || fail "podman run"
started=true
await "the controller to be ready" 90 curl -sf "http://127.0.0.1:$port/readyz"
pid=$(podman inspect --format '{{.State.Pid}}' "$container")
ids=$(awk '/^Uid:|^Gid:/ { printf "%s %s %s %s ", $2, $3, $4, $5 }' "/proc/$pid/status")
[[ $ids == "65532 65532 65532 65532 65532 65532 65532 65532 " ]] || fail "the controller runs with uid/gid $ids"
[[ $(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$container") == true ]] ||
	fail "the root filesystem is not read-only"
say "controller ready (/readyz) as uid/gid 65532, read-only root filesystem, kubeconfig mounted read-only"

# --- an eviction ---------------------------------------------------------------------------------
k create namespace "$ns" >/dev/null
k -n "$ns" create serviceaccount default >/dev/null
k apply -f "$root/examples/deviceclass.yaml" -f "$root/examples/resourceslice.yaml" >/dev/null
k -n "$ns" apply -f "$root/examples/claim-template.yaml" -f "$root/examples/pod.yaml" >/dev/null
running() { [[ $(k -n "$ns" get pod gpu-workload -o jsonpath='{.status.phase}') == Running ]]; }
await "the pod to run on the KWOK node" 90 running
say "pod $ns/gpu-workload Running on $(k -n "$ns" get pod gpu-workload -o jsonpath='{.spec.nodeName}')"
k apply -f "$root/examples/devicetaintrule-noexecute.yaml" >/dev/null
gone() { ! k -n "$ns" get pod gpu-workload; }
await "the pod to be evicted and gone" 90 gone
evicted=$(curl -sf "http://127.0.0.1:$port/metrics" | sed -n 's/^device_taint_eviction_controller_pod_deletions_total //p')
[[ $evicted == 1 ]] || fail "pod_deletions_total is '$evicted', expected 1"
say "device tainted: the pod was evicted and is gone (pod_deletions_total $evicted)"

# --- SIGTERM -------------------------------------------------------------------------------------
podman stop --time 30 "$container" >/dev/null || fail "podman stop"
code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
podman logs "$container" >"$work/controller.log" 2>&1
((code == 0)) || fail "the controller exited $code on SIGTERM"
grep -qi "panicked" "$work/controller.log" && fail "the controller panicked"
say "SIGTERM: exit 0"
say "passed"
