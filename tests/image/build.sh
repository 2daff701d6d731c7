#!/usr/bin/env bash
# `make image`: the container image without a Docker engine or a registry.
#
# 1. Builds the binary as the Dockerfile's builder stage does (static musl, same cargo command) and
#    lays out what that stage puts in /rootfs: the binary, the CA bundle, /etc/passwd and /etc/group
#    with the user 65532.
# 2. Packages it with the Dockerfile's runtime stage, taken from the Dockerfile as it is (from
#    `FROM scratch AS runtime` to the end), only its `COPY --from=builder /rootfs/ /` reading the
#    host-built root instead. podman builds it (FROM scratch: nothing is pulled) and saves it as an
#    OCI archive that `kind load image-archive` and `podman load` take.
#
# Output: target/image/device-taint-eviction.tar, image name $IMAGE (default
# localhost/device-taint-eviction:dev) in podman's local storage.
#
# Installs what a fresh Debian/Ubuntu machine lacks (as root): the Rust musl target (rustup),
# musl-tools, podman, buildah and runc (apt).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dockerfile=$root/Dockerfile
image=${IMAGE:-localhost/device-taint-eviction:dev}
say() { printf 'image: %s\n' "$*" >&2; }
fail() {
	say "FAILED: $*"
	exit 1
}

target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
out=$target_dir/image
work=$out/context
mkdir -p "$out"

apt_install() { # PACKAGE...
	[[ $(id -u) == 0 ]] || fail "$* missing; install them (apt-get install $*) or run as root"
	say "installing $*"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } \
		>"$out/apt.log" 2>&1 || { cat "$out/apt.log" >&2; fail "apt-get install $*"; }
}

# --- 1. the builder stage's /rootfs -------------------------------------------------------------
target=$(sed -n 's/^ARG TARGET=//p' "$dockerfile")
[[ -n $target ]] || fail "no 'ARG TARGET=' in the Dockerfile"
# shellcheck disable=SC2016 # the Dockerfile's text, with its literal "${TARGET}"
build_cmd='cargo build --release --locked --target "${TARGET}" --bin device-taint-eviction'
grep -qF "$build_cmd" "$dockerfile" || fail "the Dockerfile no longer builds with: $build_cmd (update this script)"
grep -qF 'CC_x86_64_unknown_linux_musl=musl-gcc' "$dockerfile" ||
	fail "the Dockerfile no longer sets CC_x86_64_unknown_linux_musl=musl-gcc (update this script)"
if ! rustup target list --installed | grep -qx "$target"; then
	say "installing the Rust target $target"
	rustup target add "$target" >&2 || fail "rustup target add $target"
fi
command -v musl-gcc >/dev/null || apt_install musl-tools

say "building the static binary: ${build_cmd//\"\$\{TARGET\}\"/$target}"
start=$SECONDS
(cd "$root" && CC_x86_64_unknown_linux_musl=musl-gcc CARGO_TERM_COLOR=never \
	cargo build --release --locked --target "$target" --bin device-taint-eviction) >"$out/build.log" 2>&1 ||
	{ tail -30 "$out/build.log" >&2; fail "cargo build for $target"; }
binary=$target_dir/$target/release/device-taint-eviction
case $(file -b "$binary") in
*"statically linked"* | *"static-pie linked"*) ;;
*) fail "not a static binary: $(file -b "$binary")" ;;
esac
"$binary" --help >/dev/null || fail "$binary --help"
say "built in $((SECONDS - start))s: $(du -h "$binary" | cut -f1), static"

[[ -s /etc/ssl/certs/ca-certificates.crt ]] || apt_install ca-certificates
rm -rf "$work"
mkdir -p "$work/rootfs/etc/ssl/certs"
install -m 0755 "$binary" "$work/rootfs/device-taint-eviction"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
# The same entries as the builder stage writes.
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
	>"$work/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/rootfs/etc/group"
chmod 0644 "$work/rootfs/etc/passwd" "$work/rootfs/etc/group"

# --- 2. the runtime stage -----------------------------------------------------------------------
copy='COPY --from=builder /rootfs/ /'
awk '/^FROM scratch AS runtime$/ { on = 1 } on' "$dockerfile" >"$work/Containerfile"
[[ -s $work/Containerfile ]] || fail "no 'FROM scratch AS runtime' stage in the Dockerfile"
[[ $(grep -c '^COPY' "$work/Containerfile") == 1 && $(grep -cxF "$copy" "$work/Containerfile") == 1 ]] ||
	fail "the runtime stage should have exactly one COPY, '$copy' (update this script)"
sed -i "s|^${copy}\$|COPY rootfs/ /|" "$work/Containerfile"

for tool in podman buildah runc; do
	command -v "$tool" >/dev/null || {
		apt_install podman buildah runc
		break
	}
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
say "packaging with the Dockerfile's runtime stage (podman build, FROM scratch) as $image"
podman build --pull=never --build-arg "VERSION=$version" --file "$work/Containerfile" --tag "$image" \
	"$work" >"$out/podman-build.log" 2>&1 || { cat "$out/podman-build.log" >&2; fail "podman build"; }
rm -f "$out/device-taint-eviction.tar"
podman save --format oci-archive --output "$out/device-taint-eviction.tar" "$image" >&2 || fail "podman save"
say "wrote $out/device-taint-eviction.tar ($(du -h "$out/device-taint-eviction.tar" | cut -f1), OCI archive of $image)"
echo "$out/device-taint-eviction.tar"
