#!/usr/bin/env bash
# Writes a kubeconfig that authenticates as a ServiceAccount of the control plane in DIR, with a
# token minted through the TokenRequest API. The ServiceAccount (and its namespace) are created if
# missing. The identity has no permissions beyond what RBAC grants it: bind roles to
# system:serviceaccount:NAMESPACE:SA as the test needs.
#
# Usage: sa-kubeconfig.sh DIR NAMESPACE SA [OUT]
#   OUT defaults to DIR/sa-NAMESPACE-SA.kubeconfig; its path is printed on stdout.
#
# Environment:
#   TOKEN_DURATION  requested token lifetime (default 24h; kubectl duration syntax or seconds)
set -euo pipefail

[[ $# -eq 3 || $# -eq 4 ]] || {
	echo "usage: $0 DIR NAMESPACE SA [OUT]" >&2
	exit 2
}
dir=$1 ns=$2 sa=$3
out=${4:-$dir/sa-$ns-$sa.kubeconfig}
[[ -f $dir/cluster.env ]] || {
	echo "sa-kubeconfig.sh: $dir/cluster.env not found; start the control plane with up.sh first" >&2
	exit 1
}
# shellcheck source=/dev/null
source "$dir/cluster.env"
duration=${TOKEN_DURATION:-24h}

kubectl=
if [[ -x ${KUBECTL:-} ]]; then
	kubectl=$KUBECTL
elif command -v kubectl >/dev/null; then
	kubectl=kubectl
fi

if [[ -n $kubectl ]]; then
	k() { "$kubectl" --kubeconfig="$dir/kubeconfig" "$@"; }
	k get namespace "$ns" >/dev/null 2>&1 || k create namespace "$ns" >/dev/null
	k -n "$ns" get serviceaccount "$sa" >/dev/null 2>&1 || k -n "$ns" create serviceaccount "$sa" >/dev/null
	token=$(k -n "$ns" create token "$sa" --duration="$duration")
else
	# No kubectl: the same three calls with curl. 409 (already exists) is fine for the creates.
	api() { # METHOD PATH [BODY]
		curl -sS --fail-with-body --cacert "$CA_FILE" -H "Authorization: Bearer $ADMIN_TOKEN" \
			-H 'Content-Type: application/json' -X "$1" "$API_SERVER$2" ${3:+--data "$3"}
	}
	create() { # PATH BODY
		local code
		code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$CA_FILE" \
			-H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
			-X POST "$API_SERVER$1" --data "$2")
		[[ $code == 201 || $code == 409 ]] || {
			echo "sa-kubeconfig.sh: POST $1 answered $code" >&2
			exit 1
		}
	}
	create /api/v1/namespaces "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$ns\"}}"
	create "/api/v1/namespaces/$ns/serviceaccounts" \
		"{\"apiVersion\":\"v1\",\"kind\":\"ServiceAccount\",\"metadata\":{\"name\":\"$sa\"}}"
	seconds=$duration
	[[ $seconds =~ ^[0-9]+h$ ]] && seconds=$((${seconds%h} * 3600))
	[[ $seconds =~ ^[0-9]+m$ ]] && seconds=$((${seconds%m} * 60))
	seconds=${seconds%s}
	response=$(api POST "/api/v1/namespaces/$ns/serviceaccounts/$sa/token" \
		"{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenRequest\",\"spec\":{\"expirationSeconds\":$seconds}}")
	token=$(sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p' <<<"$response")
fi
[[ -n $token ]] || {
	echo "sa-kubeconfig.sh: no token received" >&2
	exit 1
}

user=system:serviceaccount:$ns:$sa
(
	umask 077
	cat >"$out.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: device-taint-eviction-test
  cluster:
    server: $API_SERVER
    certificate-authority-data: $(base64 -w0 <"$CA_FILE")
users:
- name: $user
  user:
    token: $token
contexts:
- name: $user@device-taint-eviction-test
  context:
    cluster: device-taint-eviction-test
    user: $user
    namespace: $ns
current-context: $user@device-taint-eviction-test
EOF
)
mv "$out.tmp" "$out"
echo "$out"
