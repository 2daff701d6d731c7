#!/usr/bin/env bash
# Creates (or refreshes) a Node object that kube-scheduler accepts: Ready, schedulable, with
# capacity for cpu, memory and pods. No kubelet runs, so pods bound to it stay Pending; that is
# enough for the scheduler to allocate devices to their ResourceClaims (up.sh --with-scheduler).
# Nothing keeps its heartbeat fresh, so do not run node-lifecycle-controller against it.
#
# Usage: make-node.sh KUBECONFIG NAME
#
# Environment:
#   NODE_CPU (default 64), NODE_MEMORY (default 256Gi), NODE_PODS (default 1000)
set -euo pipefail

[[ $# -eq 2 ]] || {
	echo "usage: $0 KUBECONFIG NAME" >&2
	exit 2
}
kubeconfig=$1 name=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

kubectl=$("$here/build.sh" --print-dir)/kubectl
if [[ ! -x $kubectl ]]; then
	if command -v kubectl >/dev/null; then
		kubectl=kubectl
	else
		kubectl=$("$here/build.sh")/kubectl
	fi
fi
k() { "$kubectl" --kubeconfig="$kubeconfig" "$@"; }

k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $name
  labels:
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    device-taint-eviction.test: "true"
spec: {}
EOF

# The TaintNodesByCondition admission plugin gives every new node the not-ready taint; the node
# lifecycle controller would remove it once the kubelet reports Ready. Do its part.
k patch node "$name" --type=merge -p '{"spec":{"taints":null}}' >/dev/null

now=$(date -u +%FT%TZ)
resources="{\"cpu\":\"${NODE_CPU:-64}\",\"memory\":\"${NODE_MEMORY:-256Gi}\",\"pods\":\"${NODE_PODS:-1000}\"}"
k patch node "$name" --subresource=status --type=merge -p "{
  \"status\": {
    \"capacity\": $resources,
    \"allocatable\": $resources,
    \"conditions\": [{
      \"type\": \"Ready\", \"status\": \"True\", \"reason\": \"KubeletReady\",
      \"message\": \"fake node for tests, no kubelet\",
      \"lastHeartbeatTime\": \"$now\", \"lastTransitionTime\": \"$now\"
    }],
    \"addresses\": [{\"type\": \"InternalIP\", \"address\": \"127.0.0.1\"}, {\"type\": \"Hostname\", \"address\": \"$name\"}]
  }
}" >/dev/null
echo "node/$name ready"
