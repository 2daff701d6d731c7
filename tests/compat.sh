#!/usr/bin/env bash
# `make test-compat`: the integration suite on a real control plane of every supported Kubernetes
# minor (README's compatibility table), each with the feature gates and runtime config the table
# says that minor needs (tests/controlplane/up.sh picks them by version).
#
# Usage: tests/compat.sh [MINOR...]   (default: 1.35 1.36 1.37)
#
# The first run builds each older control plane from its go.mod in tests/controlplane/versions/
# (about as long as the first 1.37 build each). Not part of CI, which runs 1.37 in full.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
minors=("$@")
((${#minors[@]})) || minors=(1.35 1.36 1.37)

declare -A result=()
for minor in "${minors[@]}"; do
	echo "=== Kubernetes $minor: building (or reusing) the control plane" >&2
	CONTROLPLANE_K8S_VERSION=$minor "$root/tests/controlplane/build.sh" >/dev/null
	echo "=== Kubernetes $minor: integration tests" >&2
	if (cd "$root" && CONTROLPLANE_K8S_VERSION=$minor cargo test --locked --no-fail-fast --test '*' -- --test-threads="${COMPAT_TEST_THREADS:-4}"); then
		result[$minor]=passed
	else
		result[$minor]=FAILED
	fi
done
failed=0
for minor in "${minors[@]}"; do
	echo "Kubernetes $minor: ${result[$minor]}" >&2
	[[ ${result[$minor]} == passed ]] || failed=1
done
exit "$failed"
