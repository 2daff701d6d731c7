#!/usr/bin/env bash
# Prints the chart's RBAC objects (ServiceAccount, ClusterRole, ClusterRoleBinding and, with leader
# election, the Lease Role and RoleBinding) as YAML on stdout, exactly as `helm install` would
# create them. Cluster tests apply this to a real API server and run the controller under that
# ServiceAccount to prove the rules are enough, and no more than enough.
#
# Usage: tests/chart/render-rbac.sh [NAMESPACE [RELEASE]] [helm template flags...]
#   NAMESPACE  release namespace (default: device-taint-eviction)
#   RELEASE    release name (default: device-taint-eviction)
#   flags      passed to `helm template`, e.g. --set controller.evictionMode=evict
#
# Example: tests/chart/render-rbac.sh dte-rbac dte --set controller.evictionMode=evict | kubectl apply -f -
#
# Progress goes to stderr; helm is installed into the tools cache on first use (see lib.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=tests/chart/lib.sh
source "$here/lib.sh"

namespace=device-taint-eviction
release=device-taint-eviction
if [[ $# -gt 0 && $1 != -* ]]; then
	namespace=$1
	shift
fi
if [[ $# -gt 0 && $1 != -* ]]; then
	release=$1
	shift
fi

install_helm

# helm separates documents with "---" and starts each with "# Source: CHART/templates/FILE". Keep
# the documents of the RBAC templates; --show-only would fail on a template that renders nothing
# (role.yaml without leader election).
"$HELM" template "$release" "$root/charts/device-taint-eviction" --namespace "$namespace" "$@" |
	awk '
		/^---$/ { keep = 0; next }
		/^# Source: [^\/]+\/templates\/(serviceaccount|clusterrole|role)\.yaml$/ { keep = 1; print "---" }
		keep { print }
	'
