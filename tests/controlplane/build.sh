#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
# kubectl) from the Go modules pinned in this directory's go.mod, into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/device-taint-eviction/k8s-<version>-etcd-<version>/
# and prints that directory on stdout (progress goes to stderr).
#
# The binaries are reused when the directory is complete (its stamp file is written last). A build
# goes to a temporary directory that is renamed into place only when every binary is there, so an
# interrupted build never leaves a half-filled cache. Concurrent runs are serialised with flock.
#
# Usage: build.sh [--print-dir]
#   --print-dir  only print the cache directory, build nothing.
#
# Environment:
#   CONTROLPLANE_K8S_VERSION  the Kubernetes minor to build: the newest (this directory's go.mod,
#                             the default) or an older one with a go.mod in versions/<minor>/
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Versions come from go.mod, the single place where they are pinned (one per supported minor).
moddir=$here
minor_wanted=${CONTROLPLANE_K8S_VERSION:-}
if [[ -n $minor_wanted && -f $here/versions/$minor_wanted/go.mod ]]; then
	moddir=$here/versions/$minor_wanted
fi
k8s_version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$moddir/go.mod")
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$moddir/go.mod")
if [[ -z $k8s_version || -z $etcd_version ]]; then
	echo "build.sh: cannot read the k8s.io/kubernetes or etcd version from $moddir/go.mod" >&2
	exit 1
fi
if [[ -n $minor_wanted && $k8s_version != "v$minor_wanted".* ]]; then
	echo "build.sh: no go.mod for Kubernetes $minor_wanted (CONTROLPLANE_K8S_VERSION); supported:" \
		"$(cd "$here/versions" && printf '%s ' 1.*)and ${k8s_version#v} (go.mod)" >&2
	exit 1
fi

cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/device-taint-eviction
dest=$cache_root/k8s-$k8s_version-etcd-$etcd_version
stamp=.complete

if [[ ${1:-} == --print-dir ]]; then
	echo "$dest"
	exit 0
fi

# name|Go package
binaries=(
	"etcd|go.etcd.io/etcd/server/v3"
	"kube-apiserver|k8s.io/kubernetes/cmd/kube-apiserver"
	"kube-controller-manager|k8s.io/kubernetes/cmd/kube-controller-manager"
	"kube-scheduler|k8s.io/kubernetes/cmd/kube-scheduler"
	"kubectl|k8s.io/kubernetes/cmd/kubectl"
)

complete() {
	[[ -f $dest/$stamp ]] || return 1
	local entry
	for entry in "${binaries[@]}"; do
		[[ -x $dest/${entry%%|*} ]] || return 1
	done
}

if complete; then
	echo "$dest"
	exit 0
fi

command -v go >/dev/null || {
	echo "build.sh: the Go toolchain is required to build the control plane (see go.mod for the version)" >&2
	exit 1
}

mkdir -p "$cache_root"
exec 9>"$cache_root/.build.lock"
if ! flock -n 9; then
	echo "build.sh: another build of the control plane is running; waiting for it" >&2
	flock 9
fi
# Another run may have finished the build while we waited for the lock.
if complete; then
	echo "$dest"
	exit 0
fi

# Leftovers of builds that were killed; with the lock held, no build is using them.
rm -rf "$cache_root"/.build-*
tmp=$(mktemp -d "$cache_root/.build-XXXXXX")
# On an interrupt, stop the running go build at once and remove the partial directory.
build_pid=
trap 'rm -rf "$tmp"' EXIT
trap '[[ -z $build_pid ]] || kill "$build_pid" 2>/dev/null; exit 130' INT
trap '[[ -z $build_pid ]] || kill "$build_pid" 2>/dev/null; exit 143' TERM

# alive PID: the background job PID still runs (bash reaps its children as they exit).
alive() { kill -0 "$1" 2>/dev/null; }

# output_name PACKAGE: the file go build -o DIR/ writes for PACKAGE (a /vN suffix is skipped).
output_name() {
	local base=${1##*/} rest=${1%/*}
	if [[ $base =~ ^v[0-9]+$ ]]; then base=${rest##*/}; fi
	echo "$base"
}

# Version information as Kubernetes' own release build sets it (hack/lib/version.sh), so that
# /version and `kubectl version` report the real release instead of v0.0.0-master.
minor=${k8s_version#v*.}
minor=${minor%%.*}
major=${k8s_version#v}
major=${major%%.*}
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

names=""
pkgs=()
for entry in "${binaries[@]}"; do
	names+="${names:+, }${entry%%|*}"
	pkgs+=("${entry#*|}")
done
log() { echo "build.sh: $*" >&2; }
elapsed() { printf '%dm%02ds' $(((SECONDS - total_start) / 60)) $(((SECONDS - total_start) % 60)); }
total_start=$SECONDS
log "one-time build of the test control plane: $names"
log "  Kubernetes $k8s_version and etcd $etcd_version, compiled from their Go modules into $dest"
log "  on an empty Go cache this downloads about 850 MB of modules and takes 7-15 minutes on 2"
log "  cores (2-3 minutes with a warm Go build cache); later runs reuse the binaries at once"

# 1. Module download and package list, shared by every binary.
log "[1/2] resolving the packages (downloading missing Go modules)..."
downloads=0
go -C "$moddir" list -deps -f '{{if not .Standard}}{{.ImportPath}}{{end}}' "${pkgs[@]}" \
	>"$tmp/.packages" 2> >(
		while IFS= read -r line; do
			if [[ $line == "go: downloading "* ]]; then
				downloads=$((downloads + 1))
				((downloads % 50 != 1)) || log "  downloading modules: $downloads so far ($(elapsed))"
			else
				echo "$line" >&2
			fi
		done
	) &
build_pid=$!
wait "$build_pid"
build_pid=
total=$(($(wc -l <"$tmp/.packages") + $(go -C "$moddir" list -deps -f '{{if .Standard}}x{{end}}' "${pkgs[@]}" | grep -c x)))
log "  $total packages in all ($(elapsed))"

# 2. One go build for all binaries: packages they share are compiled once, both cores stay busy,
# and the Go build cache makes a rebuild a relink. -v names each package it compiles (not those it
# finds in the build cache), which gives the progress.
log "[2/2] compiling (progress every 20s; a binary is listed as soon as it is linked)..."
mkdir "$tmp/.out"
CGO_ENABLED=0 go -C "$moddir" build -v -trimpath -ldflags="$ldflags" -o "$tmp/.out/" "${pkgs[@]}" \
	2>"$tmp/.build.log" &
build_pid=$!
declare -A seen=()
next_report=$((SECONDS + 20))
report() {
	local entry name file done_count
	for entry in "${binaries[@]}"; do
		name=${entry%%|*}
		file=$(output_name "${entry#*|}")
		if [[ -z ${seen[$name]:-} && -x $tmp/.out/$file ]]; then
			seen[$name]=1
			log "  built $name ($(elapsed))"
		fi
	done
	if ((SECONDS >= next_report)); then
		done_count=$(grep -cv '^#' "$tmp/.build.log" || true)
		((done_count <= total)) || done_count=$total
		log "  compiled $done_count of $total packages ($((100 * done_count / total))%; those in the Go build cache are" \
			"skipped), linked ${#seen[@]} of ${#binaries[@]} binaries, $(elapsed)"
		next_report=$((SECONDS + 20))
	fi
}
while alive "$build_pid"; do
	report
	sleep 1
done
rc=0
wait "$build_pid" || rc=$?
build_pid=
if ((rc != 0)); then
	grep -v '^[a-zA-Z0-9_./~-]*$' "$tmp/.build.log" >&2 || cat "$tmp/.build.log" >&2
	log "go build failed (exit $rc)"
	exit 1
fi
next_report=$SECONDS
report
for entry in "${binaries[@]}"; do
	mv "$tmp/.out/$(output_name "${entry#*|}")" "$tmp/${entry%%|*}"
done
rm -rf "$tmp/.out" "$tmp/.build.log" "$tmp/.packages"

{
	echo "kubernetes=$k8s_version"
	echo "etcd=$etcd_version"
	go version
} >"$tmp/$stamp"
chmod 755 "$tmp"
# A directory left by an interrupted older scheme (no stamp) is replaced; with the stamp it would
# have been reused above.
rm -rf "$dest"
mv -T "$tmp" "$dest"
trap - EXIT
log "done in $(elapsed)"
echo "$dest"
