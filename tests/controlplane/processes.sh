# shellcheck shell=bash disable=SC2154 # dir is set by the script that sources this file
# Sourced by up.sh, down.sh and component.sh: which processes belong to the control plane in $dir
# (the caller sets dir to its absolute, resolved path). A pid file names a live process of this
# control plane only if that process's command line mentions $dir, so a recycled pid of some
# unrelated process is never signalled.

# alive PID: a thread of the process still runs. A zombie waiting for its parent to reap it is not
# alive; but a killed multi-threaded process (kube-apiserver, etcd) turns its main thread into a
# zombie before its other threads have exited, and its files and sockets (the listening port a
# restart needs) are closed only when the last one has: so every thread counts.
alive() {
	local task stat
	for task in /proc/"$1"/task/*/stat; do
		# A thread that exits while it is read fails the read (ESRCH): it is gone, so skip it.
		# (`read`, not `$(<file)`: under `set -e` that form could end the calling script.)
		read -r stat 2>/dev/null <"$task" || continue
		stat=${stat##*) }
		[[ ${stat%% *} == [ZX] ]] || return 0
	done
	return 1
}

# running_pid NAME: prints the pid of component NAME of this control plane if it runs.
running_pid() {
	local pidfile=$dir/run/$1.pid pid cmdline
	read -r pid 2>/dev/null <"$pidfile" || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	alive "$pid" || return 1
	cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
	[[ $cmdline == *"$dir/"* ]] || return 1
	echo "$pid"
}
