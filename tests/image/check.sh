#!/usr/bin/env bash
# `make image-check`: what can be proved of the container image without a Docker engine.
#
# 1. Builds the binary exactly as the Dockerfile's builder stage does (same target, same cargo
#    command, musl-gcc for the C parts) and checks that it is statically linked.
# 2. Runs it as the runtime stage does: as user 65532:65532 in a root filesystem that holds nothing
#    but the binary, /etc/passwd and CA certificates (what distroless/static has), none of it
#    writable by that user (the chart's readOnlyRootFilesystem). Against a local control plane it
#    prints its version, runs `explain`, and runs the controller to ready, serves /metrics, and
#    exits 0 on SIGTERM.
#
# Needs root for chroot; installs the Rust musl target (rustup) and musl-tools (apt) when missing.
# Environment: IMAGE_CHECK_KEEP=1 keeps the root filesystem and logs (the path is printed).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dockerfile=$root/Dockerfile
work=$(mktemp -d "${TMPDIR:-/tmp}/dte-image-check.XXXXXX")
rootfs=$work/rootfs
controller_pid=

say() { printf 'image-check: %s\n' "$*"; }
fail() {
	say "FAILED: $*" >&2
	for log in "$work"/*.log; do
		[[ -s $log ]] || continue
		echo "--- $(basename "$log") ---" >&2
		tail -30 "$log" >&2
	done
	exit 1
}
cleanup() {
	[[ -z $controller_pid ]] || kill -KILL "$controller_pid" 2>/dev/null || true
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

[[ $(id -u) == 0 ]] || fail "needs root (chroot into the image's root filesystem)"

# --- 1. the builder stage ----------------------------------------------------------------------
target=$(sed -n 's/^ARG TARGET=//p' "$dockerfile")
[[ -n $target ]] || fail "no 'ARG TARGET=' in the Dockerfile"
# shellcheck disable=SC2016 # the Dockerfile's text, with its literal "${TARGET}"
build_cmd='cargo build --release --locked --target "${TARGET}" --bin device-taint-eviction'
grep -qF "$build_cmd" "$dockerfile" || fail "the Dockerfile no longer builds with: $build_cmd (update this script)"
grep -qF 'CC_x86_64_unknown_linux_musl=musl-gcc' "$dockerfile" ||
	fail "the Dockerfile no longer sets CC_x86_64_unknown_linux_musl=musl-gcc (update this script)"

if ! rustup target list --installed | grep -qx "$target"; then
	say "installing the Rust target $target"
	rustup target add "$target" >"$work/rustup.log" 2>&1 || fail "rustup target add $target"
fi
if ! command -v musl-gcc >/dev/null; then
	say "installing musl-tools"
	{ apt-get update && apt-get install -y --no-install-recommends musl-tools; } >"$work/apt.log" 2>&1 ||
		fail "apt-get install musl-tools"
fi

say "building as the Dockerfile does: ${build_cmd//\"\$\{TARGET\}\"/$target}"
start=$SECONDS
(cd "$root" && TARGET=$target CC_x86_64_unknown_linux_musl=musl-gcc CARGO_TERM_COLOR=never \
	cargo build --release --locked --target "$target" --bin device-taint-eviction) >"$work/build.log" 2>&1 ||
	fail "cargo build for $target"
target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
binary=$target_dir/$target/release/device-taint-eviction
say "built in $((SECONDS - start))s: $(du -h "$binary" | cut -f1) $binary"

description=$(file -b "$binary")
case $description in
*"statically linked"* | *"static-pie linked"*) say "static: $description" ;;
*) fail "not a static binary: $description" ;;
esac

# --- 2. the runtime stage ----------------------------------------------------------------------
mkdir -p "$rootfs/etc/ssl/certs"
install -m 0755 "$binary" "$rootfs/device-taint-eviction"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
	>"$rootfs/etc/passwd"
if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
	cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
fi

say "starting a local control plane"
"$root/tests/controlplane/up.sh" "$work/controlplane" >"$work/up.log" 2>&1 || fail "tests/controlplane/up.sh"
install -m 0444 "$work/controlplane/kubeconfig" "$rootfs/kubeconfig"
chown -R 0:0 "$rootfs"
chmod -R go-w "$rootfs"

# in_image ARGS...: the binary as the image runs it.
in_image() { chroot --userspec=65532:65532 "$rootfs" /device-taint-eviction "$@"; }

# Nothing in the root filesystem is writable by the image's user.
if setpriv --reuid=65532 --regid=65532 --clear-groups touch "$rootfs/probe" 2>/dev/null; then
	fail "user 65532 can write to the root filesystem"
fi

version=$(in_image --version) || fail "device-taint-eviction --version in the image"
say "runs as 65532 in an empty root: $version"

explained=$(in_image explain --kubeconfig /kubeconfig 2>"$work/explain.log") || fail "explain in the image"
[[ $explained == "No pod is pending eviction." ]] || fail "explain printed: $explained"
say "explain against the control plane: $explained"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# chroot execs the binary, so $! is the controller itself.
chroot --userspec=65532:65532 "$rootfs" /device-taint-eviction controller --kubeconfig /kubeconfig \
	--leader-elect=false --http-addr "127.0.0.1:$port" >"$work/controller.log" 2>&1 &
controller_pid=$!
await "the controller to be ready" 60 curl -sf "http://127.0.0.1:$port/readyz"
curl -sf "http://127.0.0.1:$port/metrics" | grep -q '^device_taint_eviction_controller_pod_deletions_total ' ||
	fail "/metrics has no pod_deletions_total"
say "controller ready, /readyz and /metrics answer"
kill -TERM "$controller_pid"
code=0
wait "$controller_pid" || code=$?
controller_pid=
((code == 0)) || fail "the controller exited $code on SIGTERM"
grep -qi "error\|panicked" "$work/controller.log" && fail "the controller logged an error"
say "SIGTERM: exit 0"
say "passed"
