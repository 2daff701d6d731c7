#!/usr/bin/env bash
# End-to-end run on a kind cluster: create the cluster for one Kubernetes version, build the
# controller image (`make image`: podman, OCI archive), load it into the cluster (kind load
# image-archive), install the Helm chart, wait for the rollout, run the
# Rust integration suite against the cluster, and delete the cluster again.
#
# Usage: tests/kind/e2e.sh [VERSION]
#   VERSION   1.35, 1.36, 1.37 (default) or "all" (each in turn, one cluster at a time)
#
# Environment:
#   KEEP_CLUSTER=1   do not delete the cluster at the end (its kubeconfig path is printed)
#   SKIP_BUILD=1     do not build the image; load the existing target/image/device-taint-eviction.tar,
#                    which must hold $IMAGE
#   IMAGE            image name:tag to build and load (default localhost/device-taint-eviction:e2e)
#   CLUSTER_NAME     kind cluster name (default dte-e2e-<major>-<minor>)
#   KIND_NODE_IMAGE  node image instead of the pinned one below
#
# Needs docker (for kind), kind (v0.32 or later; the images below are kind v0.33.0's), kubectl, cargo
# and podman (tests/image/build.sh installs it on Debian/Ubuntu when run as root). helm
# is used from PATH if it is there, otherwise installed like tests/chart/check.sh does.
# See tests/kind/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

version=${1:-1.37}
if [[ $version == all ]]; then
	for v in 1.35 1.36 1.37; do
		"$0" "$v"
	done
	exit 0
fi

# Node images of kind v0.33.0 (its release notes), pinned by digest: a kindest/node tag may point
# to a build for another kind release.
case "$version" in
1.35) node_image=kindest/node:v1.35.8@sha256:07b2536e30b803ed61d1677a79df6115f798ce64c80f9e22f6ed45afd09323c0 ;;
1.36) node_image=kindest/node:v1.36.4@sha256:099e049362a1526b2db71494e1947aae99bd16290d7c895f2b7ea312e3cbfaed ;;
1.37) node_image=kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5 ;;
*)
	echo "usage: $0 [1.35|1.36|1.37|all]" >&2
	exit 2
	;;
esac
node_image=${KIND_NODE_IMAGE:-$node_image}
cluster=${CLUSTER_NAME:-dte-e2e-${version/./-}}
image=${IMAGE:-localhost/device-taint-eviction:e2e}
config="$here/cluster-$version.yaml"
release=device-taint-eviction
namespace=device-taint-eviction

# shellcheck source=tests/chart/lib.sh
source "$root/tests/chart/lib.sh"
export KUBECONFIG="$DTE_TMP/kubeconfig"
if [[ ${KEEP_CLUSTER:-0} == 1 ]]; then
	# Keep the kubeconfig with the cluster: $DTE_TMP is removed on exit.
	export KUBECONFIG="${XDG_CACHE_HOME:-$HOME/.cache}/device-taint-eviction/kind-$cluster.kubeconfig"
	mkdir -p "$(dirname "$KUBECONFIG")"
fi

for tool in docker kind kubectl cargo python3; do
	command -v "$tool" >/dev/null || die "$tool is needed (see tests/kind/README.md)"
done
if command -v helm >/dev/null; then
	HELM=$(command -v helm)
else
	install_helm
fi
kind_version=$(kind version | sed -n 's/^kind v\([0-9]*\.[0-9]*\).*/\1/p')
if [[ -z $kind_version ]] || ! printf '%s\n%s\n' 0.32 "$kind_version" | sort -V -C; then
	die "kind v0.32 or later is needed (found: $(kind version)): older releases replace, not merge, kubeadm v1beta4 extraArgs"
fi

created=0
finish() {
	local rc=$?
	set +e
	if [[ $rc -ne 0 && $created == 1 ]]; then
		log "diagnostics (exit status $rc)"
		kubectl get nodes -o wide
		kubectl get pods -A -o wide
		kubectl -n "$namespace" describe pods -l "app.kubernetes.io/instance=$release"
		kubectl -n "$namespace" logs -l "app.kubernetes.io/instance=$release" --prefix --tail=200
		kubectl get events -A --sort-by=.lastTimestamp | tail -50
	fi
	if [[ $created == 1 ]]; then
		if [[ ${KEEP_CLUSTER:-0} == 1 ]]; then
			log "keeping cluster $cluster: export KUBECONFIG=$KUBECONFIG; delete with: kind delete cluster --name $cluster"
		else
			log "deleting cluster $cluster"
			kind delete cluster --name "$cluster" >&2
		fi
	fi
	rm -rf "$DTE_TMP"
	exit "$rc"
}
trap finish EXIT

log "Kubernetes $version: creating kind cluster $cluster ($node_image, $config)"
# (grep reads whole captured outputs here: with pipefail, grep -q closing a pipe early could fail
# the producer with SIGPIPE.)
if grep -qx -- "$cluster" <<<"$(kind get clusters 2>/dev/null)"; then
	die "a kind cluster named $cluster exists already; delete it or set CLUSTER_NAME"
fi
created=1
kind create cluster --name "$cluster" --image "$node_image" --config "$config" --kubeconfig "$KUBECONFIG" --wait 180s
kubectl version

log "checking the cluster set-up"
kcm_command=$(kubectl -n kube-system get pods -l component=kube-controller-manager -o jsonpath='{.items[*].spec.containers[*].command}')
grep -qF -- '--controllers=*,-device-taint-eviction-controller' <<<"$kcm_command" ||
	die "kube-controller-manager still runs the in-tree device-taint-eviction-controller: $kcm_command"
info "in-tree device-taint-eviction-controller is disabled"
grep -qx 'devicetaintrules.resource.k8s.io' <<<"$(kubectl api-resources --api-group=resource.k8s.io -o name)" ||
	die "the API server does not serve DeviceTaintRules (feature gates / runtimeConfig in $config)"
info "DeviceTaintRule served at: $(kubectl api-versions | grep '^resource.k8s.io/' | tr '\n' ' ')"

archive=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/image/device-taint-eviction.tar
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
	log "building $image (make image)"
	archive=$(IMAGE=$image "$root/tests/image/build.sh")
fi
[[ -s $archive ]] || die "no image archive at $archive (run make image)"
log "loading $image into $cluster from $archive"
kind load image-archive "$archive" --name "$cluster"

log "installing the chart (release $release, namespace $namespace)"
"$HELM" install "$release" "$root/charts/device-taint-eviction" \
	--namespace "$namespace" --create-namespace \
	--set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
	--set-json 'logging.level="info,device_taint_eviction=debug"' \
	--wait --timeout 5m
kubectl -n "$namespace" rollout status "deployment/$release" --timeout 3m
holder=""
for _ in $(seq 60); do
	holder=$(kubectl -n "$namespace" get lease device-taint-eviction-controller -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
	[[ -n $holder ]] && break
	sleep 1
done
[[ -n $holder ]] || die "no replica became leader within 60 s"
info "leader: $holder"

log "running the integration suite against $cluster"
# DTE_TEST_KUBECONFIG makes the suite use this cluster instead of starting its own control plane
# (the suite never reads KUBECONFIG for that). The DTE_E2E_* variables tell it that the chart's
# controller is already running there.
(
	cd "$root"
	DTE_TEST_KUBECONFIG="$KUBECONFIG" \
		DTE_E2E_KUBERNETES_VERSION="$version" \
		DTE_E2E_CONTROLLER_NAMESPACE="$namespace" \
		DTE_E2E_CONTROLLER_RELEASE="$release" \
		cargo test --locked --test '*'
)

log "Kubernetes $version: e2e passed"
