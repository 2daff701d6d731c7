#!/usr/bin/env bash
# Kills or starts again one component of a control plane that up.sh started in DIR, for tests of
# what happens when etcd or kube-apiserver dies and comes back. `start` runs the component with
# exactly the flags, ports and data directory up.sh gave it (recorded in DIR/run/NAME.cmd) and
# waits until it is ready again.
#
# Usage: component.sh kill|stop|start NAME DIR
#
#   kill   SIGKILL (a crash: no clean shutdown), then wait until the process is gone
#   stop   SIGTERM, then wait until the process is gone (SIGKILL after CONTROLPLANE_STOP_TIMEOUT)
#   start  start it again and wait until it answers its health check (CONTROLPLANE_TIMEOUT)
#
# NAME is one of etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok.
set -euo pipefail

usage() {
	echo "usage: $0 kill|stop|start NAME DIR" >&2
	exit 2
}
[[ $# -eq 3 ]] || usage
action=$1 name=$2
case $action in kill | stop | start) ;; *) usage ;; esac
case $name in etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kwok) ;; *) usage ;; esac
[[ -d $3 ]] || {
	echo "component.sh: no control plane directory $3" >&2
	exit 1
}
dir=$(cd "$3" && pwd -P)
timeout=${CONTROLPLANE_TIMEOUT:-120}
stop_timeout=${CONTROLPLANE_STOP_TIMEOUT:-20}
log() { echo "component.sh: $*" >&2; }

# shellcheck source=tests/controlplane/processes.sh
source "$(dirname "${BASH_SOURCE[0]}")/processes.sh"

case $action in
kill | stop)
	pid=$(running_pid "$name") || {
		log "$name of $dir is not running"
		exit 1
	}
	signal=KILL wait_for=10
	[[ $action == kill ]] || signal=TERM wait_for=$stop_timeout
	kill -"$signal" "$pid"
	deadline=$((SECONDS + wait_for))
	while alive "$pid"; do
		if ((SECONDS >= deadline)); then
			[[ $signal == TERM ]] || {
				log "$name (pid $pid) survived SIGKILL for ${wait_for}s"
				exit 1
			}
			log "$name (pid $pid) still running after ${wait_for}s; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			signal=KILL deadline=$((SECONDS + 10))
		fi
		sleep 0.05
	done
	rm -f "$dir/run/$name.pid"
	echo "=== $(date -u +%FT%TZ) component.sh: $action ($signal) pid $pid" >>"$dir/logs/$name.log"
	;;
start)
	if pid=$(running_pid "$name"); then
		log "$name of $dir is already running (pid $pid)"
		exit 1
	fi
	[[ -s $dir/run/$name.cmd ]] || {
		log "$dir/run/$name.cmd is missing: was $name started by this version of up.sh?"
		exit 1
	}
	cmd=() url='' curl_args=()
	# shellcheck source=/dev/null # written by up.sh's remember
	source "$dir/run/$name.cmd"
	pidfile=$dir/run/$name.pid logfile=$dir/logs/$name.log
	rm -f "$pidfile"
	echo "=== $(date -u +%FT%TZ) component.sh starting $name again" >>"$logfile"
	# shellcheck disable=SC2016 # $0 and $@ are for the inner shell
	setsid -f sh -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "${cmd[@]}" \
		</dev/null >>"$logfile" 2>&1
	deadline=$((SECONDS + 10))
	until [[ -s $pidfile ]]; do
		((SECONDS < deadline)) || {
			log "$name did not start"
			exit 1
		}
		sleep 0.05
	done
	pid=$(<"$pidfile")
	deadline=$((SECONDS + timeout))
	until body=$(curl -sS --max-time 2 "${curl_args[@]}" "$url" 2>/dev/null) &&
		[[ $body == ok || $body == *'"health":"true"'* ]]; do
		alive "$pid" || {
			log "$name exited; last lines of $logfile:"
			tail -n 40 "$logfile" >&2
			exit 1
		}
		((SECONDS < deadline)) || {
			log "$name was not ready after ${timeout}s"
			exit 1
		}
		sleep 0.1
	done
	;;
esac
