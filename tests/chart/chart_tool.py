"""Helpers for tests/chart/check.sh; run with the tools venv's python (PyYAML, kubernetes-validate).

Subcommands (every one exits non-zero with a message on stderr when a check fails):

  validate [--kube-version V ...] [--allow-no-schema KIND ...] FILE...
      Validate every object in the YAML files against the OpenAPI schemas of each Kubernetes
      version V (default 1.37.0), strict (unknown fields are errors). An object whose kind has no schema fails unless its kind is
      listed with --allow-no-schema (a CRD such as ServiceMonitor): a typo in a core apiVersion must
      not pass as "unknown kind".
  kinds FILE          Print "Kind namespace/name" of every object, sorted.
  rbac FILE           Print the RBAC rules as sorted "Kind[/namespace] group/resource verb [names]" lines
                      ("core" for the empty API group), plus bindings as "Binding ... -> subject".
  args FILE           Print the controller container's args, one per line.
  values-doc VALUES README [--write]
      Check that every value in VALUES is documented by a `# --` comment and that README's values
      table (between the values-table markers) is what the comments generate, with the types
      declared in values.schema.json next to VALUES; --write updates the table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

TABLE_BEGIN = "<!-- values-table:begin (generated from values.yaml by tests/chart/chart_tool.py values-doc) -->"
TABLE_END = "<!-- values-table:end -->"


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def load_docs(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            fail(f"{path}: a document is not a Kubernetes object: {str(d)[:120]}")
    return docs


def ref(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{doc['kind']} {ns}/{name}" if ns else f"{doc['kind']} {name}"


def cmd_validate(args: argparse.Namespace) -> None:
    import functools

    import kubernetes_validate
    from kubernetes_validate import utils
    from kubernetes_validate.utils import SchemaNotFoundError

    # kubernetes-validate re-reads the large _definitions.json for every object; read each once.
    utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)

    versions = args.kube_version or ["1.37.0"]
    shown = ", ".join(v.rsplit(".", 1)[0] for v in versions)
    errors = 0
    for path in args.files:
        for doc in load_docs(path):
            problems = []
            skipped = False
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except SchemaNotFoundError:
                    if doc["kind"] in args.allow_no_schema:
                        skipped = True
                    else:
                        problems.append(f"no schema in Kubernetes {version}")
                except kubernetes_validate.ValidationError as e:
                    where = ".".join(str(p) for p in e.path) or "(root)"
                    problems.append(f"Kubernetes {version}: {where}: {e.message}")
            if problems:
                errors += 1
                for problem in problems:
                    print(f"  FAILED  {doc['apiVersion']:<32} {ref(doc)}: {problem}", file=sys.stderr)
            elif skipped:
                print(f"  skipped {doc['apiVersion']:<32} {ref(doc)} (not a built-in kind, no schema)")
            else:
                print(f"  ok      {doc['apiVersion']:<32} {ref(doc)} (strict: {shown})")
    if errors:
        fail(f"{errors} object(s) did not validate against Kubernetes {shown}")


def cmd_kinds(args: argparse.Namespace) -> None:
    for line in sorted(ref(d) for d in load_docs(args.file)):
        print(line)


def cmd_rbac(args: argparse.Namespace) -> None:
    lines = []
    for doc in load_docs(args.file):
        kind = doc["kind"]
        ns = (doc.get("metadata") or {}).get("namespace")
        where = f"{kind}/{ns}" if ns else kind
        if kind in ("ClusterRole", "Role"):
            for rule in doc.get("rules") or []:
                if rule.get("nonResourceURLs"):
                    fail(f"{ref(doc)}: unexpected nonResourceURLs in {rule}")
                names = rule.get("resourceNames") or []
                only = f" [{','.join(names)}]" if names else ""
                for group in rule.get("apiGroups") or []:
                    for resource in rule.get("resources") or []:
                        for verb in rule.get("verbs") or []:
                            lines.append(f"{where} {group or 'core'}/{resource} {verb}{only}")
        elif kind in ("ClusterRoleBinding", "RoleBinding"):
            role = doc["roleRef"]
            for s in doc.get("subjects") or []:
                lines.append(f"{where} {role['kind']}/{role['name']} -> "
                             f"{s['kind']}/{s.get('namespace', '')}/{s['name']}")
    for line in sorted(lines):
        print(line)


def cmd_args(args: argparse.Namespace) -> None:
    deployments = [d for d in load_docs(args.file) if d["kind"] == "Deployment"]
    if len(deployments) != 1:
        fail(f"expected exactly one Deployment, found {len(deployments)}")
    containers = deployments[0]["spec"]["template"]["spec"]["containers"]
    for arg in containers[0].get("args") or []:
        print(arg)


# values.yaml documentation ----------------------------------------------------------------------

KEY_RE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")


def documented_keys(values_text: str) -> dict[str, str]:
    """Map dotted key -> description for every key preceded by a `# --` comment block."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for raw in values_text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        if not stripped:
            pending = None
            continue
        m = KEY_RE.match(raw)
        if not m:
            pending = None  # a list item or a continuation line
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group("key")))
        if pending is not None:
            docs[".".join(k for _, k in stack)] = " ".join(pending)
        pending = None
    return docs


def leaves(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        out = []
        for k, v in value.items():
            out += leaves(v, f"{prefix}.{k}" if prefix else k)
        return out
    return [prefix]


def lookup(values: dict[str, Any], dotted: str) -> Any:
    cur: Any = values
    for part in dotted.split("."):
        cur = cur[part]
    return cur


def yaml_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def schema_type(schema: dict[str, Any], dotted: str) -> str | None:
    """The JSON-schema type declared for a dotted key, if the schema declares one."""
    node: Any = schema
    for part in dotted.split("."):
        node = (node.get("properties") or {}).get(part)
        if not isinstance(node, dict):
            return None
    t = node.get("type")
    return "/".join(t) if isinstance(t, list) else t


def cmd_values_doc(args: argparse.Namespace) -> None:
    text = Path(args.values).read_text()
    values = yaml.safe_load(text)
    schema = json.loads(Path(args.values).with_name("values.schema.json").read_text())
    docs = documented_keys(text)
    undocumented = [
        leaf for leaf in leaves(values)
        if not any(leaf == k or leaf.startswith(k + ".") for k in docs)
    ]
    if undocumented:
        fail("values without a `# --` comment: " + ", ".join(undocumented))
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for key, desc in docs.items():
        default = lookup(values, key)
        shown = json.dumps(default, separators=(",", ":")) if not isinstance(default, str) \
            else json.dumps(default)
        shown = shown.replace("|", "\\|")
        desc = desc.replace("|", "\\|")
        typ = schema_type(schema, key) or yaml_type(default)
        rows.append(f"| `{key}` | {typ} | `{shown}` | {desc} |")
    table = "\n".join(rows)

    readme = Path(args.readme)
    content = readme.read_text()
    if TABLE_BEGIN not in content or TABLE_END not in content:
        fail(f"{readme}: values-table markers missing")
    head, rest = content.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    wanted = f"{head}{TABLE_BEGIN}\n{table}\n{TABLE_END}{tail}"
    if args.write:
        readme.write_text(wanted)
        print(f"wrote the values table of {readme}")
    elif wanted != content:
        fail(f"{readme}: the values table is out of date; run "
             f"`python3 tests/chart/chart_tool.py values-doc {args.values} {args.readme} --write`")
    else:
        print(f"  ok      {len(docs)} documented values; README table up to date")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("--kube-version", action="append", help="repeatable; default 1.37.0")
    v.add_argument("--allow-no-schema", action="append", default=[])
    v.add_argument("files", nargs="+")
    v.set_defaults(func=cmd_validate)
    for name, func in (("kinds", cmd_kinds), ("rbac", cmd_rbac), ("args", cmd_args)):
        s = sub.add_parser(name)
        s.add_argument("file")
        s.set_defaults(func=func)
    d = sub.add_parser("values-doc")
    d.add_argument("values")
    d.add_argument("readme")
    d.add_argument("--write", action="store_true")
    d.set_defaults(func=cmd_values_doc)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
