#!/usr/bin/env bash
# Starts a real Kubernetes control plane for tests: etcd and kube-apiserver, optionally
# kube-scheduler and kube-controller-manager, all on free 127.0.0.1 ports with every piece of state
# under DIR. Exits 0 once the API server answers /readyz, leaving the processes running in their
# own sessions; stop them with down.sh DIR. See README.md in this directory.
#
# Usage: up.sh [--with-scheduler] [--controllers=LIST] [--kwok-nodes=N] [--feature-gates=LIST]
#              [--runtime-config=LIST] DIR
#
#   --kwok-nodes=N  also run KWOK (build-kwok.sh), which plays the kubelet of every node annotated
#                   kwok.x-k8s.io/node=fake: such a node turns Ready and keeps a fresh Lease, a pod
#                   bound to it is Running, a deleted one is removed once its grace period is over.
#                   Creates N such nodes, node-1 ... node-N (0: none, only KWOK).
#   --feature-gates=LIST   extra feature gates (k=v,...) for every component, after those of
#                          CONTROLPLANE_FEATURE_GATES
#   --runtime-config=LIST  extra kube-apiserver --runtime-config entries (k=v,...), after those of
#                          CONTROLPLANE_RUNTIME_CONFIG
#
# Environment:
#   CONTROLPLANE_K8S_VERSION    Kubernetes minor to run (build.sh): the newest (default) or an older
#                               one of versions/, with the gates and runtime config it needs
#   CONTROLPLANE_TIMEOUT        seconds to wait for each component to become ready (default 120)
#   CONTROLPLANE_FEATURE_GATES  extra feature gates (k=v,...) for every component
#   CONTROLPLANE_RUNTIME_CONFIG extra kube-apiserver --runtime-config entries (k=v,...)
set -euo pipefail

usage() {
	echo "usage: $0 [--with-scheduler] [--controllers=LIST] [--kwok-nodes=N] [--feature-gates=LIST] [--runtime-config=LIST] DIR" >&2
	exit 2
}

with_scheduler=false
controllers=
kwok_nodes=
extra_gates=
extra_runtime_config=
dir=
for arg in "$@"; do
	case $arg in
	--with-scheduler) with_scheduler=true ;;
	--kwok-nodes=*)
		kwok_nodes=${arg#--kwok-nodes=}
		[[ $kwok_nodes =~ ^[0-9]+$ ]] || usage
		;;
	--controllers=*) controllers=${arg#--controllers=} ;;
	--feature-gates=*) extra_gates=${arg#--feature-gates=} ;;
	--runtime-config=*) extra_runtime_config=${arg#--runtime-config=} ;;
	-h | --help) usage ;;
	-*) echo "up.sh: unknown flag $arg" >&2 && usage ;;
	*)
		[[ -z $dir ]] || usage
		dir=$arg
		;;
	esac
done
[[ -n $dir ]] || usage

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
umask 077 # tokens, keys and kubeconfigs are secrets, if only test ones
timeout=${CONTROLPLANE_TIMEOUT:-120}

log() { echo "up.sh: $*" >&2; }

for tool in curl openssl flock setsid base64; do
	command -v "$tool" >/dev/null || {
		log "$tool is required but not installed"
		exit 1
	}
done

bin=$("$here/build.sh")
kwok_dir=
[[ -z $kwok_nodes ]] || kwok_dir=$("$here/build-kwok.sh")

mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
mkdir -p "$dir/pki" "$dir/etcd" "$dir/logs" "$dir/run"
chmod 700 "$dir/pki" "$dir/etcd"

components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# shellcheck source=tests/controlplane/processes.sh
source "$(dirname "${BASH_SOURCE[0]}")/processes.sh"

for c in "${components[@]}"; do
	if pid=$(running_pid "$c"); then
		log "$c of $dir is already running (pid $pid); run down.sh $dir first"
		exit 1
	fi
	rm -f "$dir/run/$c.pid"
done

# --- ports ---------------------------------------------------------------------------------------
# Ports are drawn at random below the kernel's ephemeral range (so outgoing connections cannot take
# them meanwhile) among those no socket uses. Should another process take a port between the check
# and the bind anyway, the component fails with "address already in use" and is started again on
# new ports.
read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range
port_lo=10000
port_hi=$((ephemeral_low > port_lo + 1000 ? ephemeral_low - 1 : 65000))
picked=" "
pick_port() { # VAR
	local used p hex i
	used=$(awk 'NR > 1 { split($2, a, ":"); print a[2] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null || true)
	for i in $(seq 200); do
		p=$((port_lo + (RANDOM * 32768 + RANDOM) % (port_hi - port_lo + 1)))
		hex=$(printf '%04X' "$p")
		if [[ $picked != *" $p "* ]] && ! grep -qx "$hex" <<<"$used"; then
			picked+="$p "
			printf -v "$1" '%s' "$p"
			return 0
		fi
	done
	log "found no free port in $port_lo-$port_hi after $i tries"
	exit 1
}

# --- certificates, keys and tokens (kept across restarts of the same DIR) ------------------------
pki=$dir/pki
if ! [[ -s $pki/ca.crt && -s $pki/apiserver.crt && -s $pki/sa.key && -s $pki/sa.pub ]]; then
	log "generating certificates in $pki"
	(
		cd "$pki"
		rm -f ca.* apiserver.* sa.*
		ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
		openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 \
			-subj "/CN=device-taint-eviction-test-ca" \
			-addext "basicConstraints=critical,CA:TRUE" \
			-addext "keyUsage=critical,keyCertSign,cRLSign"
		openssl req "${ec[@]}" -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver"
		printf '%s\n' \
			"subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
			"basicConstraints=critical,CA:FALSE" \
			"keyUsage=critical,digitalSignature,keyEncipherment" \
			"extendedKeyUsage=serverAuth" >apiserver.ext
		openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
			-days 3650 -extfile apiserver.ext -out apiserver.crt
		rm apiserver.csr apiserver.ext
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa.key
		openssl pkey -in sa.key -pubout -out sa.pub
	) 2>"$dir/logs/openssl.log" || {
		log "generating certificates failed:"
		cat "$dir/logs/openssl.log" >&2
		exit 1
	}
fi

if [[ ! -s $dir/tokens.csv ]]; then
	(
		# token,user,uid,"group,..." (kube-apiserver --token-auth-file)
		printf '%s,admin,admin,"system:masters"\n' "$(openssl rand -hex 24)"
		printf '%s,test-user,test-user\n' "$(openssl rand -hex 24)"
		printf '%s,system:kube-controller-manager,system:kube-controller-manager\n' "$(openssl rand -hex 24)"
		printf '%s,system:kube-scheduler,system:kube-scheduler\n' "$(openssl rand -hex 24)"
	) >"$dir/tokens.csv.tmp"
	mv "$dir/tokens.csv.tmp" "$dir/tokens.csv"
fi
token_of() { awk -F, -v user="$1" '$2 == user { print $1 }' "$dir/tokens.csv"; }

# --- helpers -------------------------------------------------------------------------------------
# start NAME ARGS...: runs ARGS in a new session (immune to the caller's exit and terminal signals),
# appending to DIR/logs/NAME.log, and records its pid in DIR/run/NAME.pid.
start() {
	local name=$1 pidfile=$dir/run/$1.pid logfile=$dir/logs/$1.log
	shift
	rm -f "$pidfile"
	echo "=== $(date -u +%FT%TZ) up.sh starting $name" >>"$logfile"
	# shellcheck disable=SC2016 # $$, $0 and $@ are for the inner shell
	setsid -f sh -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
		</dev/null >>"$logfile" 2>&1
	local deadline=$((SECONDS + 10))
	until [[ -s $pidfile ]]; do
		((SECONDS < deadline)) || {
			log "$name did not start"
			return 1
		}
		sleep 0.05
	done
}

fail() { # NAME MESSAGE
	log "$2"
	log "last lines of $dir/logs/$1.log:"
	tail -n 40 "$dir/logs/$1.log" >&2 || true
	"$here/down.sh" "$dir" >&2 || true
	exit 1
}

# wait_ready NAME URL CURL-ARGS...: polls URL until it answers "ok" (or etcd's health JSON).
# Returns 0 when ready, 1 on timeout, 2 if the process died (3 if it died on a busy port).
wait_ready() {
	local name=$1 url=$2 pid body deadline=$((SECONDS + timeout))
	shift 2
	pid=$(<"$dir/run/$name.pid")
	while :; do
		if body=$(curl -sS --max-time 2 "$@" "$url" 2>/dev/null) &&
			[[ $body == ok || $body == *'"health":"true"'* ]]; then
			return 0
		fi
		if ! alive "$pid"; then
			grep -q "address already in use" <(tail -n 50 "$dir/logs/$name.log") && return 3
			return 2
		fi
		((SECONDS < deadline)) || return 1
		sleep 0.2
	done
}

# run NAME URL CURL-ARGS... with the command in the array `cmd`: starts it and waits until ready,
# retrying on fresh ports (via the function `ports_NAME`) when a port was taken meanwhile.
launch() {
	local name=$1 attempt rc
	shift
	for attempt in 1 2 3 4 5; do
		"ports_${name//-/_}"
		start "$name" "${cmd[@]}" || fail "$name" "could not start $name"
		log "waiting for $name (pid $(<"$dir/run/$name.pid"), up to ${timeout}s)"
		rc=0
		wait_ready "$name" "$url" "$@" || rc=$?
		case $rc in
		0)
			remember "$name" "$@"
			return 0
			;;
		1) fail "$name" "$name was not ready after ${timeout}s" ;;
		2) fail "$name" "$name exited" ;;
		3) log "$name: a port was taken meanwhile; retrying on other ports (attempt $attempt)" ;;
		esac
	done
	fail "$name" "$name could not bind its ports"
}

# remember NAME CURL-ARGS...: records how NAME was started (command line, ready URL and curl
# arguments, shell-quoted) in DIR/run/NAME.cmd, so that component.sh can start it again with the
# same flags, ports and data directory after a test killed it.
remember() {
	local name=$1
	shift
	{
		printf 'cmd=('
		printf '%q ' "${cmd[@]}"
		printf ')\nurl=%q\ncurl_args=(' "$url"
		(($# == 0)) || printf '%q ' "$@"
		printf ')\n'
	} >"$dir/run/$name.cmd.tmp"
	mv "$dir/run/$name.cmd.tmp" "$dir/run/$name.cmd"
}

write_kubeconfig() { # FILE USER TOKEN
	local tmp=$1.tmp
	cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: device-taint-eviction-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $2
  user:
    token: $3
contexts:
- name: $2@device-taint-eviction-test
  context:
    cluster: device-taint-eviction-test
    user: $2
    namespace: default
current-context: $2@device-taint-eviction-test
EOF
	mv "$tmp" "$1"
}

# The same gates for every component. DRADeviceTaints and DRADeviceTaintRules are GA in 1.37
# (default on, not yet locked); naming them keeps the intent explicit. DynamicResourceAllocation is
# GA and locked, so it must not be set. Every older API version is served too, so that the tests can
# use DeviceTaintRules at each of them.
feature_gates=DRADeviceTaints=true,DRADeviceTaintRules=true
runtime_config=resource.k8s.io/v1beta1=true,resource.k8s.io/v1beta2=true,resource.k8s.io/v1alpha3=true
# An older minor (CONTROLPLANE_K8S_VERSION) runs with exactly what README's compatibility table says
# it needs: 1.36 serves DeviceTaintRule at v1beta2 behind its gate, 1.35 at v1alpha3 behind both.
case $(basename "$bin") in
k8s-v1.36.*)
	feature_gates=DRADeviceTaintRules=true
	runtime_config=resource.k8s.io/v1beta2=true
	;;
k8s-v1.35.*)
	feature_gates=DRADeviceTaints=true,DRADeviceTaintRules=true
	runtime_config=resource.k8s.io/v1alpha3=true
	;;
esac
[[ -z ${CONTROLPLANE_FEATURE_GATES:-} ]] || feature_gates+=,$CONTROLPLANE_FEATURE_GATES
[[ -z ${CONTROLPLANE_RUNTIME_CONFIG:-} ]] || runtime_config+=,$CONTROLPLANE_RUNTIME_CONFIG
[[ -z $extra_gates ]] || feature_gates+=,$extra_gates
[[ -z $extra_runtime_config ]] || runtime_config+=,$extra_runtime_config
started=$SECONDS
# Set by pick_port in the ports_* functions; cmd and url too.
etcd_port='' etcd_peer_port='' api_port='' scheduler_port='' kcm_port='' kwok_port='' cmd=() url=''

# --- etcd ----------------------------------------------------------------------------------------
ports_etcd() {
	pick_port etcd_port
	pick_port etcd_peer_port
	cmd=(
		"$bin/etcd"
		--name=controlplane
		--data-dir="$dir/etcd"
		--listen-client-urls="http://127.0.0.1:$etcd_port"
		--advertise-client-urls="http://127.0.0.1:$etcd_port"
		--listen-peer-urls="http://127.0.0.1:$etcd_peer_port"
		--initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port"
		--initial-cluster="controlplane=http://127.0.0.1:$etcd_peer_port"
		--unsafe-no-fsync=true
		--quota-backend-bytes=$((4 * 1024 * 1024 * 1024))
		--log-level=warn
	)
	url=http://127.0.0.1:$etcd_port/health
}
launch etcd

# --- kube-apiserver ------------------------------------------------------------------------------
ports_kube_apiserver() {
	pick_port api_port
	cmd=(
		"$bin/kube-apiserver"
		--etcd-servers="http://127.0.0.1:$etcd_port"
		--etcd-prefix=/registry
		--bind-address=127.0.0.1
		--advertise-address=127.0.0.1
		--secure-port="$api_port"
		--tls-cert-file="$pki/apiserver.crt"
		--tls-private-key-file="$pki/apiserver.key"
		--client-ca-file="$pki/ca.crt"
		--token-auth-file="$dir/tokens.csv"
		--requestheader-client-ca-file="$pki/ca.crt"
		--requestheader-allowed-names=front-proxy-client
		--requestheader-username-headers=X-Remote-User
		--requestheader-group-headers=X-Remote-Group
		--requestheader-extra-headers-prefix=X-Remote-Extra-
		--service-account-issuer=https://kubernetes.default.svc.cluster.local
		--service-account-key-file="$pki/sa.pub"
		--service-account-signing-key-file="$pki/sa.key"
		--service-cluster-ip-range=10.0.0.0/24
		--endpoint-reconciler-type=none
		"--authorization-mode=Node,RBAC"
		--allow-privileged=true
		--runtime-config="$runtime_config"
		--feature-gates="$feature_gates"
		--profiling=false
	)
	url=https://127.0.0.1:$api_port/readyz
}
launch kube-apiserver --cacert "$pki/ca.crt" -H "Authorization: Bearer $(token_of admin)"

write_kubeconfig "$dir/kubeconfig" admin "$(token_of admin)"
write_kubeconfig "$dir/token-user-kubeconfig" test-user "$(token_of test-user)"
write_kubeconfig "$dir/kube-controller-manager.kubeconfig" system:kube-controller-manager \
	"$(token_of system:kube-controller-manager)"
write_kubeconfig "$dir/kube-scheduler.kubeconfig" system:kube-scheduler "$(token_of system:kube-scheduler)"

# --- kube-scheduler ------------------------------------------------------------------------------
if $with_scheduler; then
	ports_kube_scheduler() {
		pick_port scheduler_port
		cmd=(
			"$bin/kube-scheduler"
			--kubeconfig="$dir/kube-scheduler.kubeconfig"
			--authentication-kubeconfig="$dir/kube-scheduler.kubeconfig"
			--authorization-kubeconfig="$dir/kube-scheduler.kubeconfig"
			--leader-elect=false
			--bind-address=127.0.0.1
			--secure-port="$scheduler_port"
			--feature-gates="$feature_gates"
		)
		url=https://127.0.0.1:$scheduler_port/healthz
	}
	launch kube-scheduler --insecure
fi

# --- kube-controller-manager ---------------------------------------------------------------------
if [[ -n $controllers ]]; then
	ports_kube_controller_manager() {
		pick_port kcm_port
		cmd=(
			"$bin/kube-controller-manager"
			--kubeconfig="$dir/kube-controller-manager.kubeconfig"
			--authentication-kubeconfig="$dir/kube-controller-manager.kubeconfig"
			--authorization-kubeconfig="$dir/kube-controller-manager.kubeconfig"
			--controllers="$controllers"
			--use-service-account-credentials=true
			--service-account-private-key-file="$pki/sa.key"
			--root-ca-file="$pki/ca.crt"
			--leader-elect=false
			--bind-address=127.0.0.1
			--secure-port="$kcm_port"
			--feature-gates="$feature_gates"
			--v=2
		)
		url=https://127.0.0.1:$kcm_port/healthz
	}
	launch kube-controller-manager --insecure
fi

# --- KWOK ----------------------------------------------------------------------------------------
if [[ -n $kwok_nodes ]]; then
	ports_kwok() {
		pick_port kwok_port
		cmd=(
			"$kwok_dir/kwok"
			--kubeconfig="$dir/kwok.kubeconfig"
			--config="$kwok_dir/stages.yaml"
			--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake
			--node-lease-duration-seconds=40
			--server-address="127.0.0.1:$kwok_port"
		)
		url=http://127.0.0.1:$kwok_port/healthz
	}
	# KWOK acts for the kubelets (node status, leases, pod status, removal of terminated pods); it
	# runs as admin, since a kubelet's own credentials only cover its node.
	write_kubeconfig "$dir/kwok.kubeconfig" admin "$(token_of admin)"
	launch kwok
	for i in $(seq "$kwok_nodes"); do
		"$bin/kubectl" --kubeconfig="$dir/kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: node-$i
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
spec: {}
EOF
		# The TaintNodesByCondition admission plugin gives every new node the not-ready taint; the
		# node lifecycle controller would remove it once the node is Ready. Do its part.
		"$bin/kubectl" --kubeconfig="$dir/kubeconfig" patch node "node-$i" --type=merge \
			-p '{"spec":{"taints":null}}' >/dev/null
	done
	if ((kwok_nodes > 0)); then
		"$bin/kubectl" --kubeconfig="$dir/kubeconfig" wait --for=condition=Ready node -l type=kwok \
			--timeout="${timeout}s" >/dev/null || fail kwok "the KWOK nodes did not become Ready"
	fi
fi

# --- what callers need ---------------------------------------------------------------------------
{
	echo "# Written by up.sh; shell syntax, safe to source."
	printf '%s=%q\n' \
		API_SERVER "https://127.0.0.1:$api_port" \
		ETCD_ENDPOINT "http://127.0.0.1:$etcd_port" \
		CA_FILE "$pki/ca.crt" \
		ADMIN_TOKEN "$(token_of admin)" \
		TEST_USER test-user \
		TEST_USER_TOKEN "$(token_of test-user)" \
		BIN_DIR "$bin" \
		KUBECTL "$bin/kubectl"
} >"$dir/cluster.env.tmp"
mv "$dir/cluster.env.tmp" "$dir/cluster.env"

log "control plane ready in $((SECONDS - started))s: https://127.0.0.1:$api_port" \
	"(scheduler: $with_scheduler, controllers: ${controllers:-none}, KWOK nodes: ${kwok_nodes:-none})"
echo "export KUBECONFIG=$dir/kubeconfig"
