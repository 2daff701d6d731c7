#!/usr/bin/env bash
# Stops the control plane that up.sh started in DIR: SIGTERM, then SIGKILL after a deadline.
# Removes only its pid files; certificates, etcd data, logs and kubeconfigs stay. Idempotent.
#
# Usage: down.sh DIR
#
# Environment:
#   CONTROLPLANE_STOP_TIMEOUT  seconds to wait after SIGTERM before SIGKILL (default 20)
set -euo pipefail

[[ $# -eq 1 ]] || {
	echo "usage: $0 DIR" >&2
	exit 2
}
[[ -d $1 ]] || exit 0
dir=$(cd "$1" && pwd -P)
timeout=${CONTROLPLANE_STOP_TIMEOUT:-20}

# shellcheck source=tests/controlplane/processes.sh
source "$(dirname "${BASH_SOURCE[0]}")/processes.sh"

# stop NAME...: SIGTERM to each, wait until all are gone or the deadline passes, then SIGKILL.
stop() {
	local name pid pids=() deadline
	for name in "$@"; do
		if pid=$(running_pid "$name"); then
			echo "down.sh: stopping $name (pid $pid)" >&2
			kill -TERM "$pid" 2>/dev/null || true
			pids+=("$pid")
		fi
	done
	deadline=$((SECONDS + timeout))
	for pid in "${pids[@]}"; do
		while alive "$pid"; do
			if ((SECONDS >= deadline)); then
				echo "down.sh: pid $pid still running after ${timeout}s; sending SIGKILL" >&2
				kill -KILL "$pid" 2>/dev/null || true
				deadline=$((SECONDS + 10))
				while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
				break
			fi
			sleep 0.1
		done
	done
	for name in "$@"; do
		running_pid "$name" >/dev/null || rm -f "$dir/run/$name.pid"
	done
}

# Clients first, etcd last so the API server can shut down cleanly.
stop kwok kube-scheduler kube-controller-manager
stop kube-apiserver
stop etcd
