#!/usr/bin/env bash
# Checks the Helm chart charts/device-taint-eviction and the manifests in examples/ without a
# cluster:
#   1. values.yaml: every value documented; README values table up to date
#   2. values.schema.json: a valid JSON Schema 2020-12 that accepts the shipped values files
#   3. helm lint --strict (default values and tests/chart/values-full.yaml)
#   4. helm template with default values and variants; every rendered object validated (strict)
#      against the Kubernetes OpenAPI schemas of 1.35, 1.36 and 1.37; expected objects, args and
#      RBAC rules asserted exactly (pods/eviction only in evict mode, Lease Role only with leader
#      election); NOTES.txt rendered by helm install --dry-run=client
#   5. wrong values (types, enums, minimums, unknown keys, unsupported combinations, too old a
#      Kubernetes) make helm template fail with a message naming the problem
#   6. tests/chart/render-rbac.sh prints exactly the RBAC objects
#   7. examples/*.yaml validate (strict) against Kubernetes 1.35, 1.36 and 1.37 (DeviceTaintRule at
#      the version each serves)
#   8. tests/kind/cluster-*.yaml: the feature gates, runtime config and kube-controller-manager
#      patch each Kubernetes version needs; a pinned node image for each in tests/kind/e2e.sh
#   9. shellcheck on every script of the project, hadolint on the Dockerfile
#
# Tools (helm, kubernetes-validate, check-jsonschema, shellcheck, hadolint) are installed on first use into
# ${XDG_CACHE_HOME:-$HOME/.cache}/device-taint-eviction/tools and reused (see lib.sh).
# Exit status 0 only if every check passed; the first failure stops the run with "FAIL: ...".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=tests/chart/lib.sh
source "$here/lib.sh"

chart="$root/charts/device-taint-eviction"
kube_versions=(1.35.0 1.36.0 1.37.0)
kube_version_flags=()
for v in "${kube_versions[@]}"; do kube_version_flags+=(--kube-version "$v"); done
out="$DTE_TMP/out"
mkdir -p "$out"
checks=0
started=$SECONDS

pass() {
	checks=$((checks + 1))
	info "ok: $*"
}

tool() { "$PY" "$here/chart_tool.py" "$@"; }

# expect_same NAME FILE: FILE must equal stdin, else show the difference.
expect_same() {
	local name=$1 actual=$2 expected="$DTE_TMP/expected"
	cat >"$expected"
	if ! diff -u --label "expected $name" --label "actual $name" "$expected" "$actual" >&2; then
		die "$name differs from what is expected (diff above)"
	fi
	pass "$name"
}

# render NAME [helm template flags...]: renders the chart as release "dte" in namespace "dte-system"
# into $out/NAME.yaml, validates it against the schemas of every supported Kubernetes version and
# extracts kinds, args and RBAC rules into $out/NAME.{kinds,args,rbac}.
render() {
	local name=$1
	shift
	local file="$out/$name.yaml"
	"$HELM" template dte "$chart" --namespace dte-system --kube-version 1.37.0 "$@" >"$file" ||
		die "helm template ($name) failed"
	tool validate "${kube_version_flags[@]}" --allow-no-schema ServiceMonitor "$file" >&2 ||
		die "rendered objects ($name) are not valid Kubernetes objects"
	tool kinds "$file" >"$out/$name.kinds"
	tool args "$file" >"$out/$name.args"
	tool rbac "$file" >"$out/$name.rbac"
	pass "$name: rendered; valid for Kubernetes ${kube_versions[*]} (strict)"
}

# must_fail NAME EXPECTED_MESSAGE [helm template flags...]
must_fail() {
	local name=$1 message=$2
	shift 2
	local log="$out/fail-$name.log"
	if "$HELM" template dte "$chart" --namespace dte-system --kube-version 1.37.0 "$@" >"$log" 2>&1; then
		die "helm template accepted wrong values ($name: $*)"
	fi
	grep -qF -- "$message" "$log" || {
		cat "$log" >&2
		die "helm template ($name) failed, but without the expected message: $message"
	}
	pass "rejected $name: $(grep -m1 -F -- "$message" "$log" | sed 's/^[[:space:]-]*//')"
}

log "tools"
install_helm
install_venv
info "helm $("$HELM" version --template '{{.Version}}') ($HELM)"
info "kubernetes-validate $("$PY" -c 'import kubernetes_validate; print(kubernetes_validate.__version__)'), $("$CHECK_JSONSCHEMA" --version)"
info "shellcheck $("$SHELLCHECK" --version | sed -n 's/^version: //p'), $("$HADOLINT" --version)"
info "tools cache: $DTE_TOOLS"

log "1. values.yaml documentation"
tool values-doc "$chart/values.yaml" "$chart/README.md"
pass "every value has a '# --' comment; README values table matches"

log "2. values.schema.json"
"$CHECK_JSONSCHEMA" --check-metaschema "$chart/values.schema.json" >&2 ||
	die "values.schema.json is not a valid JSON Schema"
# shellcheck disable=SC2016 # a literal "$schema" key, not a shell expansion
grep -qF '"$schema": "https://json-schema.org/draft/2020-12/schema"' "$chart/values.schema.json" ||
	die "values.schema.json must declare JSON Schema draft 2020-12"
pass "values.schema.json is a valid draft 2020-12 schema"
"$CHECK_JSONSCHEMA" --schemafile "$chart/values.schema.json" "$chart/values.yaml" "$here/values-full.yaml" >&2 ||
	die "the shipped values files do not match values.schema.json"
pass "values.yaml and tests/chart/values-full.yaml match the schema"

log "3. helm lint --strict"
for v in "${kube_versions[@]}"; do
	"$HELM" lint --strict --kube-version "$v" "$chart" >"$out/lint.log" 2>&1 || {
		cat "$out/lint.log" >&2
		die "helm lint --strict failed (Kubernetes $v)"
	}
	pass "helm lint --strict, default values, Kubernetes $v"
done
"$HELM" lint --strict --kube-version 1.37.0 "$chart" -f "$here/values-full.yaml" >"$out/lint.log" 2>&1 || {
	cat "$out/lint.log" >&2
	die "helm lint --strict failed with tests/chart/values-full.yaml"
}
pass "helm lint --strict, tests/chart/values-full.yaml"

log "4. rendering"

info "default values"
render default
expect_same "default: objects" "$out/default.kinds" <<'EOF'
ClusterRole dte-device-taint-eviction
ClusterRoleBinding dte-device-taint-eviction
Deployment dte-system/dte-device-taint-eviction
PodDisruptionBudget dte-system/dte-device-taint-eviction
Role dte-system/dte-device-taint-eviction-leader-election
RoleBinding dte-system/dte-device-taint-eviction-leader-election
Service dte-system/dte-device-taint-eviction-metrics
ServiceAccount dte-system/dte-device-taint-eviction
EOF
expect_same "default: controller args" "$out/default.args" <<'EOF'
controller
--concurrent-device-taint-eviction-syncs=10
--eviction-mode=delete
--max-evictions-per-second=0
--max-evictions-burst=1
--http-addr=0.0.0.0:8080
--leader-elect=true
--leader-elect-namespace=dte-system
--leader-elect-lease-name=device-taint-eviction-controller
--leader-elect-lease-duration=15
--kube-api-qps=100
--kube-api-burst=200
--guard-window=10m
--guard-min-pods=16
--guard-max-percent=25
--guard-max-pods=1000
--log-format=text
--log-level=info
EOF
# The least privilege the controller needs (delete mode): no pods/eviction, nothing else.
expect_same "default: RBAC rules" "$out/default.rbac" <<'EOF'
ClusterRole core/pods delete
ClusterRole core/pods list
ClusterRole core/pods watch
ClusterRole core/pods/status patch
ClusterRole events.k8s.io/events create
ClusterRole events.k8s.io/events patch
ClusterRole resource.k8s.io/devicetaintrules list
ClusterRole resource.k8s.io/devicetaintrules watch
ClusterRole resource.k8s.io/devicetaintrules/status patch
ClusterRole resource.k8s.io/resourceclaims list
ClusterRole resource.k8s.io/resourceclaims watch
ClusterRole resource.k8s.io/resourceslices list
ClusterRole resource.k8s.io/resourceslices watch
ClusterRoleBinding ClusterRole/dte-device-taint-eviction -> ServiceAccount/dte-system/dte-device-taint-eviction
Role/dte-system coordination.k8s.io/leases create
Role/dte-system coordination.k8s.io/leases get [device-taint-eviction-controller]
Role/dte-system coordination.k8s.io/leases patch [device-taint-eviction-controller]
RoleBinding/dte-system Role/dte-device-taint-eviction-leader-election -> ServiceAccount/dte-system/dte-device-taint-eviction
EOF
"$PY" - "$out/default.yaml" <<'PY' || die "default: Deployment does not have the expected shape (see above)"
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
dep = docs["Deployment"]
spec = dep["spec"]["template"]["spec"]
(c,) = spec["containers"]
problems = []
def want(cond, what):
    if not cond:
        problems.append(what)
want(dep["spec"]["replicas"] == 2, "replicas 2")
psc, sc = spec.get("securityContext", {}), c.get("securityContext", {})
want(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532, "pod runAsNonRoot, runAsUser 65532")
want(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65532, "container runAsNonRoot, runAsUser 65532")
want(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
want(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
want(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
want(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
want(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, "liveness /healthz")
want(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, "readiness /readyz")
want(c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}], "container port metrics 8080")
env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c["env"]}
want(env.get("POD_NAME") == "metadata.name", "POD_NAME from metadata.name")
want(env.get("POD_NAMESPACE") == "metadata.namespace", "POD_NAMESPACE from metadata.namespace")
want("requests" in c.get("resources", {}) and "limits" in c.get("resources", {}), "resources requests and limits")
want(c["image"] == "device-taint-eviction:0.1.0", "image defaults to appVersion tag")
want(spec["serviceAccountName"] == "dte-device-taint-eviction", "serviceAccountName")
want("podAntiAffinity" in spec.get("affinity", {}), "default pod anti-affinity with 2 replicas")
svc = docs["Service"]
want(svc["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}], "Service port metrics")
want(svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"], "Service selects the Deployment's pods")
pdb = docs["PodDisruptionBudget"]
want(pdb["spec"] == {"maxUnavailable": 1, "selector": dep["spec"]["selector"]}, "PDB maxUnavailable 1 on the pods")
for p in problems:
    print(f"    missing: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
pass "default: hardened securityContext, probes, POD_NAME/POD_NAMESPACE, metrics port, PDB"

info "evict mode"
render evict --set controller.evictionMode=evict
grep -qx -- '--eviction-mode=evict' "$out/evict.args" || die "evict: --eviction-mode=evict missing"
{
	grep -vx 'ClusterRole core/pods delete' "$out/default.rbac"
	echo "ClusterRole core/pods/eviction create"
} | sort >"$out/evict.rbac.expected"
expect_same "evict: RBAC = default - pods delete + pods/eviction create" "$out/evict.rbac" <"$out/evict.rbac.expected"
grep -q 'pods/eviction' "$out/default.rbac" && die "default (delete) mode must not grant pods/eviction"
pass "delete mode grants no pods/eviction"

info "leader election off, one replica"
render no-leader --set leaderElection.enabled=false --set replicaCount=1
grep -qx -- '--leader-elect=false' "$out/no-leader.args" || die "no-leader: --leader-elect=false missing"
grep -q -- '--leader-elect-' "$out/no-leader.args" && die "no-leader: lease flags rendered without leader election"
grep -v '^Role' "$out/default.rbac" >"$out/no-leader.rbac.expected"
expect_same "no-leader: RBAC = default without the Lease Role" "$out/no-leader.rbac" <"$out/no-leader.rbac.expected"
grep -qE '^(Role|RoleBinding|PodDisruptionBudget) ' "$out/no-leader.kinds" &&
	die "no-leader: Role, RoleBinding or PodDisruptionBudget rendered"
pass "no-leader: no Role, RoleBinding or PodDisruptionBudget"

info "one replica with leader election"
render one-replica --set replicaCount=1
grep -q '^PodDisruptionBudget ' "$out/one-replica.kinds" && die "one-replica: a PodDisruptionBudget with one replica blocks drains"
grep -q '^Role ' "$out/one-replica.kinds" || die "one-replica: the Lease Role is missing"
grep -q 'podAntiAffinity' "$out/one-replica.yaml" && die "one-replica: anti-affinity rendered for one replica"
pass "one-replica: no PodDisruptionBudget, no anti-affinity, Lease Role kept"

info "rate limits at the edges the CLI accepts"
render rate-edges --set-json controller.maxEvictionsPerSecond=0.001 --set controller.kubeApiQps=0
grep -qx -- '--max-evictions-per-second=0.001' "$out/rate-edges.args" || die "rate-edges: --max-evictions-per-second=0.001 missing"
grep -qx -- '--kube-api-qps=0' "$out/rate-edges.args" || die "rate-edges: --kube-api-qps=0 missing"
pass "rate-edges: 0.001 evictions per second and QPS 0 (no client-side limit) are accepted"

info "ServiceMonitor on"
render servicemonitor --set serviceMonitor.enabled=true
grep -qx 'ServiceMonitor dte-system/dte-device-taint-eviction' "$out/servicemonitor.kinds" ||
	die "servicemonitor: ServiceMonitor missing"
"$PY" - "$out/servicemonitor.yaml" <<'PY' || die "servicemonitor: does not scrape port metrics at /metrics"
import sys, yaml
(sm,) = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "ServiceMonitor"]
(svc,) = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Service"]
ep = sm["spec"]["endpoints"][0]
ok = ep["port"] == "metrics" and ep["path"] == "/metrics"
labels = svc["metadata"]["labels"]
ok = ok and all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
sys.exit(0 if ok else 1)
PY
pass "servicemonitor: scrapes port metrics at /metrics of the chart's Service (CRD object not schema-validated)"

info "every value changed (tests/chart/values-full.yaml)"
render full -f "$here/values-full.yaml"
expect_same "full: controller args" "$out/full.args" <<'EOF'
controller
--concurrent-device-taint-eviction-syncs=32
--eviction-mode=evict
--max-evictions-per-second=2.5
--max-evictions-burst=10
--protected-priority=-1000000
--dry-run
--http-addr=[::]:9090
--leader-elect=true
--leader-elect-namespace=dte-leases
--leader-elect-lease-name=dte-lease
--leader-elect-lease-duration=30
--kube-api-qps=50.5
--kube-api-burst=100
--guard-window=90s
--guard-min-pods=8
--guard-max-percent=12.5
--guard-max-pods=0
--guard-accept-pool=gpu.example.com/node-1=12
--guard-accept-pool=gpu.example.com/node-2=3
--guard-accept-cluster=40
--log-format=json
--log-level=info,device_taint_eviction=debug,kube: warn
--some-future-flag=1
EOF
grep -qx 'Role/dte-leases coordination.k8s.io/leases patch \[dte-lease\]' "$out/full.rbac" ||
	die "full: the Lease Role is not in leaderElection.namespace"
grep -qx 'NetworkPolicy dte-system/dte-full' "$out/full.kinds" || die "full: no NetworkPolicy with networkPolicy.enabled"
grep -q '^NetworkPolicy ' "$out/default.kinds" && die "default: a NetworkPolicy without networkPolicy.enabled"
grep -qx 'RoleBinding/dte-leases Role/dte-full-leader-election -> ServiceAccount/dte-system/dte-sa' "$out/full.rbac" ||
	die "full: the Lease RoleBinding does not bind the ServiceAccount of the release namespace"
for want in 'priorityClassName: system-cluster-critical' 'name: RUST_BACKTRACE' 'containerPort: 9090' \
	'port: 9091' 'image: "registry.example.com/platform/device-taint-eviction:0.1.0-test"' \
	'kubernetes.io/os: linux' 'node-role.kubernetes.io/control-plane' 'topologySpreadConstraints:' \
	'release: prometheus' 'example.com/tier: control' 'name: regcred'; do
	grep -qF -- "$want" "$out/full.yaml" || die "full: '$want' not rendered"
done
pass "full: every value reaches the rendered objects"

info "NOTES.txt"
"$HELM" install dte "$chart" --namespace dte-system --dry-run=client >"$out/notes-default.txt" 2>&1 || {
	cat "$out/notes-default.txt" >&2
	die "helm install --dry-run=client failed"
}
sed -n '/^NOTES:/,$p' "$out/notes-default.txt" >"$out/notes-default"
for want in 'kubectl get lease -n dte-system device-taint-eviction-controller' \
	'--controllers=*,-device-taint-eviction-controller' 'service/dte-device-taint-eviction-metrics 8080'; do
	grep -qF -- "$want" "$out/notes-default" || die "NOTES.txt (default) lacks: $want"
done
"$HELM" install dte "$chart" --namespace dte-system --dry-run=client --set replicaCount=1 \
	--set leaderElection.enabled=false --set controller.dryRun=true >"$out/notes-dry.txt" 2>&1 ||
	die "helm install --dry-run=client failed (dry run, no leader election)"
sed -n '/^NOTES:/,$p' "$out/notes-dry.txt" >"$out/notes-dry"
for want in 'DRY RUN' 'Leader election is off'; do
	grep -qF -- "$want" "$out/notes-dry" || die "NOTES.txt (dry run) lacks: $want"
done
pass "NOTES.txt renders (leader Lease, in-tree controller warning, metrics; dry-run and no-leader variants)"

log "5. wrong values are rejected"
must_fail replicaCount-string "/replicaCount" --set replicaCount=two
must_fail replicaCount-zero "/replicaCount" --set replicaCount=0
must_fail evictionMode-enum "/controller/evictionMode" --set controller.evictionMode=kill
must_fail logFormat-enum "/logging/format" --set logging.format=xml
must_fail syncs-minimum "/controller/concurrentDeviceTaintEvictionSyncs" --set controller.concurrentDeviceTaintEvictionSyncs=0
must_fail rate-negative "/controller/maxEvictionsPerSecond" --set controller.maxEvictionsPerSecond=-1
must_fail guard-percent-above-100 "/guard/maxPercent" --set guard.maxPercent=101
must_fail guard-min-negative "/guard/minPods" --set guard.minPods=-1
must_fail guard-window-unit "/guard/window" --set guard.window=10minutes
must_fail guard-accept-pool-form "/guard/acceptPools/0" --set 'guard.acceptPools[0]=node-1'
must_fail rate-string "/controller/maxEvictionsPerSecond" --set controller.maxEvictionsPerSecond=fast
must_fail rate-too-small "/controller/maxEvictionsPerSecond" --set-json controller.maxEvictionsPerSecond=0.0001
must_fail rate-too-large "/controller/maxEvictionsPerSecond" --set controller.maxEvictionsPerSecond=2000000
must_fail qps-negative "/controller/kubeApiQps" --set controller.kubeApiQps=-1
must_fail qps-too-small "/controller/kubeApiQps" --set-json controller.kubeApiQps=0.0001
must_fail qps-too-large "/controller/kubeApiQps" --set controller.kubeApiQps=2000000
must_fail burst-minimum "/controller/maxEvictionsBurst" --set controller.maxEvictionsBurst=0
must_fail protectedPriority-type "/controller/protectedPriority" --set controller.protectedPriority=high
must_fail protectedPriority-range "/controller/protectedPriority" --set controller.protectedPriority=3000000000
must_fail dryRun-type "/controller/dryRun" --set controller.dryRun=maybe
must_fail leaseDuration-minimum "/leaderElection/leaseDuration" --set leaderElection.leaseDuration=0
must_fail leaderElect-type "/leaderElection/enabled" --set leaderElection.enabled=yes
must_fail port-range "/http/port" --set http.port=70000
must_fail pullPolicy-enum "/image/pullPolicy" --set image.pullPolicy=Sometimes
must_fail unknown-top-level-key "additional properties 'replicas' not allowed" --set replicas=3
must_fail unknown-nested-key "additional properties 'mode' not allowed" --set controller.mode=evict
must_fail extraArgs-type "/extraArgs" --set extraArgs=--dry-run
must_fail replicas-without-leader "needs leaderElection.enabled=true" --set leaderElection.enabled=false
must_fail servicemonitor-without-service "needs service.enabled=true" --set serviceMonitor.enabled=true --set service.enabled=false
must_fail serviceaccount-without-name "serviceAccount.name is required" --set serviceAccount.create=false
if "$HELM" template dte "$chart" --kube-version 1.34.0 >"$out/old.log" 2>&1; then
	die "helm template accepted Kubernetes 1.34"
fi
grep -qF 'incompatible with Kubernetes' "$out/old.log" || {
	cat "$out/old.log" >&2
	die "Kubernetes 1.34 rejected without the kubeVersion message"
}
pass "rejected Kubernetes 1.34 (kubeVersion >=1.35.0-0)"

log "6. render-rbac.sh"
bash "$here/render-rbac.sh" rbac-ns rbac-rel --set controller.evictionMode=evict >"$out/rbac-only.yaml" 2>"$out/rbac-only.log" || {
	cat "$out/rbac-only.log" >&2
	die "render-rbac.sh failed"
}
tool validate --kube-version 1.37.0 "$out/rbac-only.yaml" >"$out/rbac-only.validate.log" || {
	cat "$out/rbac-only.validate.log" >&2
	die "render-rbac.sh output is not valid"
}
tool kinds "$out/rbac-only.yaml" >"$out/rbac-only.kinds"
expect_same "render-rbac.sh: objects" "$out/rbac-only.kinds" <<'EOF'
ClusterRole rbac-rel-device-taint-eviction
ClusterRoleBinding rbac-rel-device-taint-eviction
Role rbac-ns/rbac-rel-device-taint-eviction-leader-election
RoleBinding rbac-ns/rbac-rel-device-taint-eviction-leader-election
ServiceAccount rbac-ns/rbac-rel-device-taint-eviction
EOF
tool rbac "$out/rbac-only.yaml" | sed 's/rbac-ns/dte-system/g; s/rbac-rel-/dte-/g' >"$out/rbac-only.rbac"
expect_same "render-rbac.sh: rules (evict mode)" "$out/rbac-only.rbac" <"$out/evict.rbac"
bash "$here/render-rbac.sh" rbac-ns --set leaderElection.enabled=false --set replicaCount=1 2>/dev/null |
	"$PY" "$here/chart_tool.py" kinds - >"$out/rbac-noleader.kinds"
expect_same "render-rbac.sh: objects without leader election" "$out/rbac-noleader.kinds" <<'EOF'
ClusterRole device-taint-eviction
ClusterRoleBinding device-taint-eviction
ServiceAccount rbac-ns/device-taint-eviction
EOF

log "7. examples"
shopt -s nullglob
examples=("$root"/examples/*.yaml)
shopt -u nullglob
[[ ${#examples[@]} -gt 0 ]] || die "no examples/*.yaml found"
# DeviceTaintRule is served as resource.k8s.io/v1alpha3 on 1.35 and v1beta2 on 1.36 (the README
# says to change apiVersion there); everything else in examples/ is the same on every version.
declare -A rule_version=([1.35.0]=v1alpha3 [1.36.0]=v1beta2 [1.37.0]=v1)
for v in "${kube_versions[@]}"; do
	mkdir -p "$out/examples-$v"
	for f in "${examples[@]}"; do
		if grep -qx 'kind: DeviceTaintRule' "$f"; then
			sed "s#^apiVersion: resource.k8s.io/v1\$#apiVersion: resource.k8s.io/${rule_version[$v]}#" "$f" >"$out/examples-$v/${f##*/}"
		else
			cp "$f" "$out/examples-$v/"
		fi
	done
	tool validate --kube-version "$v" "$out/examples-$v"/*.yaml >"$out/examples-$v.log" || {
		cat "$out/examples-$v.log" >&2
		die "examples/ do not validate against Kubernetes $v"
	}
	cat "$out/examples-$v.log" >&2
	pass "${#examples[@]} example files valid for Kubernetes $v (strict; DeviceTaintRule as ${rule_version[$v]})"
done

log "8. kind cluster configurations"
"$PY" - "$root/tests/kind" <<'PY' || die "tests/kind cluster configurations are not as expected (see above)"
import re, sys, yaml
from pathlib import Path

kind_dir = Path(sys.argv[1])
# What each version needs (README in tests/kind explains why); extra runtimeConfig is allowed.
want = {
    "1.35": ({"DRADeviceTaints": True, "DRADeviceTaintRules": True}, {"resource.k8s.io/v1alpha3"}),
    "1.36": ({"DRADeviceTaintRules": True}, {"resource.k8s.io/v1beta2"}),
    "1.37": ({}, set()),
}
e2e = (kind_dir / "e2e.sh").read_text()
bad = []
for version, (gates, apis) in want.items():
    before = len(bad)
    path = kind_dir / f"cluster-{version}.yaml"
    cfg = yaml.safe_load(path.read_text())
    if cfg.get("kind") != "Cluster" or cfg.get("apiVersion") != "kind.x-k8s.io/v1alpha4":
        bad.append(f"{path.name}: not a kind v1alpha4 Cluster")
    if cfg.get("featureGates", {}) != gates:
        bad.append(f"{path.name}: featureGates {cfg.get('featureGates')} != {gates}")
    runtime = cfg.get("runtimeConfig", {})
    for api in apis:
        if runtime.get(api) != "true":
            bad.append(f"{path.name}: runtimeConfig {api} is not \"true\"")
    planes = [n for n in cfg.get("nodes", []) if n.get("role") == "control-plane"]
    controllers = None
    for node in planes:
        for patch in node.get("kubeadmConfigPatches", []):
            doc = yaml.safe_load(patch)
            if doc.get("kind") == "ClusterConfiguration":
                controllers = doc.get("controllerManager", {}).get("extraArgs", {}).get("controllers")
    if controllers != "*,-device-taint-eviction-controller":
        bad.append(f"{path.name}: kube-controller-manager controllers is {controllers!r}")
    if not re.search(rf"^{re.escape(version)}\) node_image=kindest/node:v{re.escape(version)}\.[0-9]+@sha256:[0-9a-f]{{64}} ;;$", e2e, re.M):
        bad.append(f"e2e.sh: no digest-pinned kindest/node:v{version}.x image")
    print(f"  {'ok     ' if len(bad) == before else 'FAILED '} {path.name}")
for b in bad:
    print(f"  FAILED  {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
pass "kind configs for 1.35, 1.36, 1.37: gates, runtime config, in-tree controller disabled, pinned node images"

log "9. scripts and Dockerfile"
shopt -s nullglob
scripts=("$root"/tests/chart/*.sh "$root"/tests/kind/*.sh "$root"/tests/image/*.sh "$root"/tests/controlplane/*.sh
	"$root"/tests/*.sh "$root"/.ci/run)
shopt -u nullglob
(cd "$root" && "$SHELLCHECK" --external-sources "${scripts[@]#"$root"/}") || die "shellcheck found problems"
pass "shellcheck: ${scripts[*]#"$root"/}"
"$HADOLINT" "$root/Dockerfile" || die "hadolint found problems in the Dockerfile"
pass "hadolint: Dockerfile"

printf '\ntests/chart/check.sh finished in %ss\n' "$((SECONDS - started))"
printf 'chart: %s passed, 0 failed\n' "$checks"
