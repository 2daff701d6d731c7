#!/usr/bin/env bash
# Builds KWOK (sigs.k8s.io/kwok), which plays the kubelets of `up.sh --kwok-nodes N`, from the Go
# module proxy into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/device-taint-eviction/kwok-<version>/
# together with stages.yaml, the Stage documents up.sh passes to it, and prints that directory
# (progress goes to stderr). Reused when complete; concurrent runs wait for each other (flock).
#
# The stages are KWOK's own, read from its module in the Go module cache at build time:
#   node/fast/node-initialize            a new node becomes Ready (conditions, addresses, capacity)
#   node/heartbeat-with-lease            its Lease is renewed, so it stays Ready
#   pod/fast/pod-ready                   a pod bound to the node is Running and Ready at once
#   pod/fast/pod-complete                a pod whose containers all exit becomes Succeeded
#   pod/general/pod-delete               a deleted pod without finalizers is removed once it has
#                                        terminated: between 1s and its grace period
#
# Usage: build-kwok.sh [--print-dir]
set -euo pipefail

# The version is pinned here, the only place.
kwok_version=v0.8.0
stages=(
	node/fast/node-initialize.yaml
	node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
	pod/fast/pod-ready.yaml
	pod/fast/pod-complete.yaml
	pod/general/pod-delete.yaml
)

cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/device-taint-eviction
dest=$cache_root/kwok-$kwok_version
stamp=.complete
log() { echo "build-kwok.sh: $*" >&2; }

if [[ ${1:-} == --print-dir ]]; then
	echo "$dest"
	exit 0
fi

complete() { [[ -f $dest/$stamp && -x $dest/kwok && -s $dest/stages.yaml ]]; }
if complete; then
	echo "$dest"
	exit 0
fi

command -v go >/dev/null || {
	log "the Go toolchain is required to build KWOK"
	exit 1
}

mkdir -p "$cache_root"
exec 9>"$cache_root/.build-kwok.lock"
if ! flock -n 9; then
	log "another build of KWOK is running; waiting for it"
	flock 9
fi
if complete; then
	echo "$dest"
	exit 0
fi
rm -rf "$cache_root"/.build-kwok-*
tmp=$(mktemp -d "$cache_root/.build-kwok-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

start=$SECONDS
log "one-time build of KWOK $kwok_version (simulated kubelets for --kwok-nodes) into $dest"
log "  about 2 minutes on 2 idle cores with an empty Go cache; later runs reuse it at once"
# Outside any module (the temporary directory), so that KWOK's own go.mod decides its dependencies.
module_dir=$(go -C "$tmp" mod download -json "sigs.k8s.io/kwok@$kwok_version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
if [[ ! -d $module_dir/kustomize/stage ]]; then
	log "cannot find the kwok module's kustomize/stage in the Go module cache ($module_dir)"
	exit 1
fi
for stage in "${stages[@]}"; do
	echo "---"
	echo "# sigs.k8s.io/kwok@$kwok_version kustomize/stage/$stage"
	cat "$module_dir/kustomize/stage/$stage"
done >"$tmp/stages.yaml"
GOBIN=$tmp CGO_ENABLED=0 go -C "$tmp" install -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@$kwok_version"
{
	echo "kwok=$kwok_version"
	go version
} >"$tmp/$stamp"
chmod 755 "$tmp"
rm -rf "$dest"
mv -T "$tmp" "$dest"
trap - EXIT
log "built KWOK in $((SECONDS - start))s"
echo "$dest"
