# shellcheck shell=bash disable=SC2154 # root and dir are set by the script that sources this file
# Sourced by tests/demo.sh and tests/demo-guard.sh: their timeline, clean-up and waiting, and the
# local cluster both run on. The caller sets root (the repository) and dir (a new temporary
# directory) first.

start=$(date +%s.%N)
controller_pid=
follower_pid=

# say MESSAGE: one timeline line, with the seconds since the demo started.
say() { printf '[%6.2fs] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { print a - b }')" "$*"; }

cleanup() {
	[[ -z $follower_pid ]] || kill "$follower_pid" 2>/dev/null || true
	if [[ -n $controller_pid ]]; then
		kill "$controller_pid" 2>/dev/null || true
		wait "$controller_pid" 2>/dev/null || true
	fi
	"$root/tests/controlplane/down.sh" "$dir" >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT

# await DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds or the deadline passes.
await() {
	local what=$1 deadline=$(($(date +%s) + $2))
	shift 2
	until "$@" >/dev/null 2>&1; do
		if (($(date +%s) >= deadline)); then
			echo "${0##*/}: timed out waiting for $what" >&2
			echo "--- controller log ---" >&2
			tail -20 "$dir/controller.log" >&2 || true
			exit 1
		fi
		sleep 0.2
	done
}

# start_cluster: builds device-taint-eviction (and, on a first run, the control plane and KWOK,
# with their progress shown), starts etcd, kube-apiserver, kube-scheduler, the upstream
# resource-claim controller and KWOK with node node-1, and points KUBECONFIG and k (kubectl) at it.
start_cluster() {
	say "building device-taint-eviction"
	cargo build --quiet --locked --manifest-path "$root/Cargo.toml"
	"$root/tests/controlplane/build.sh" >/dev/null
	"$root/tests/controlplane/build-kwok.sh" >/dev/null
	say "starting etcd, kube-apiserver, kube-scheduler, the resource-claim controller and KWOK with node node-1"
	"$root/tests/controlplane/up.sh" --with-scheduler --controllers=resource-claim-controller --kwok-nodes=1 "$dir" \
		>"$dir.up.log" 2>&1 || { cat "$dir.up.log" >&2; exit 1; }
	rm -f "$dir.up.log"
	export KUBECONFIG=$dir/kubeconfig
	kubectl=$("$root/tests/controlplane/build.sh" --print-dir)/kubectl
}
k() { "$kubectl" "$@"; }
