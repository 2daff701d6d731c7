# shellcheck shell=bash disable=SC2154 # dir is set by the script that sources this file
# Sourced by up.sh, down.sh and component.sh: which processes belong to the control plane in $dir
# (the caller sets dir to its absolute, resolved path). A pid file names a live process of this
# control plane only if that process's command line mentions $dir, so a recycled pid of some
# unrelated process is never signalled.

# alive PID: the process exists and is not a zombie waiting for its parent to reap it.
alive() {
	local stat
	{ stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != Z ]]
}

# running_pid NAME: prints the pid of component NAME of this control plane if it runs.
running_pid() {
	local pidfile=$dir/run/$1.pid pid cmdline
	[[ -f $pidfile ]] || return 1
	pid=$(<"$pidfile")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	alive "$pid" || return 1
	cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	[[ $cmdline == *"$dir/"* ]] || return 1
	echo "$pid"
}
