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
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Versions come from go.mod, the single place where they are pinned.
k8s_version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$here/go.mod")
if [[ -z $k8s_version || -z $etcd_version ]]; then
	echo "build.sh: cannot read the k8s.io/kubernetes or etcd version from $here/go.mod" >&2
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

echo "build.sh: building Kubernetes $k8s_version and etcd $etcd_version into $dest" >&2
echo "build.sh: a cold build downloads the Go modules and takes several minutes" >&2
total_start=$SECONDS
for entry in "${binaries[@]}"; do
	name=${entry%%|*}
	pkg=${entry#*|}
	start=$SECONDS
	echo "build.sh: building $name ($pkg)..." >&2
	CGO_ENABLED=0 go -C "$here" build -trimpath -ldflags="$ldflags" -o "$tmp/$name" "$pkg" &
	build_pid=$!
	wait "$build_pid"
	build_pid=
	echo "build.sh: built $name in $((SECONDS - start))s (total $((SECONDS - total_start))s)" >&2
done

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
echo "build.sh: done in $((SECONDS - total_start))s" >&2
echo "$dest"
