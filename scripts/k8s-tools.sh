# shellcheck shell=bash
# The tools scripts/k8s-validate.sh needs, pinned, in versioned places outside the clone (shared by
# every clone on the machine): kustomize and kubeconform through the Go module proxy, our PromQL
# checker (scripts/promql-check, Prometheus' parser pinned by its go.sum), kubernetes-validate (the
# Kubernetes schemas, and PyYAML) from PyPI in a virtual environment, and from its schemas a tree
# that kubeconform reads offline. Sourced, not run:
#   scripts/setup.sh         k8s_tools_install   installs what is missing (nothing, the second time)
#   scripts/k8s-validate.sh  k8s_tools_missing   names what is missing; it installs nothing

KUSTOMIZE_VERSION=v5.7.1
KUBECONFORM_VERSION=v0.7.0
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VERSION=1.32.0

K8S_TOOLS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${AGENTLINE_TOOLS:-${AGENTLINE_OPT:-/opt/agentline}}
BIN=$TOOLS/bin
VENV=$TOOLS/venvs/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
SCHEMAS=$TOOLS/share/kubernetes-schemas/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
SCHEMA_TREE=$SCHEMAS/v$KUBERNETES_VERSION-standalone-strict
KUSTOMIZE=$BIN/kustomize-$KUSTOMIZE_VERSION
KUBECONFORM=$BIN/kubeconform-$KUBECONFORM_VERSION
PROMQL_CHECK=$BIN/promql-check-$(cat "$K8S_TOOLS_ROOT"/scripts/promql-check/{go.mod,go.sum,main.go} | sha256sum | cut -c1-12)
PYTHON=$VENV/bin/python

k8s_tools_say() { printf 'k8s tools: %s\n' "$*"; }

# Prints one line per missing tool; prints nothing when all are there.
k8s_tools_missing() {
    [[ -x $KUSTOMIZE ]] || echo "kustomize $KUSTOMIZE_VERSION ($KUSTOMIZE)"
    [[ -x $KUBECONFORM ]] || echo "kubeconform $KUBECONFORM_VERSION ($KUBECONFORM)"
    [[ -x $PROMQL_CHECK ]] || echo "scripts/promql-check, built from its current sources ($PROMQL_CHECK)"
    [[ -f $VENV/.installed ]] || echo "kubernetes-validate $KUBERNETES_VALIDATE_VERSION ($VENV)"
    [[ -f $SCHEMA_TREE/.complete ]] || echo "the kubeconform schema tree ($SCHEMA_TREE)"
}

k8s_tools_install_go_tool() {  # TARGET BINARY MODULE@VERSION
    local target=$1 binary=$2 module=$3 gobin
    [[ -x $target ]] && return
    k8s_tools_say "installing $module"
    gobin=$(mktemp -d)
    CGO_ENABLED=0 GOBIN=$gobin GOFLAGS=-mod=mod go install "$module" || { rm -rf "$gobin"; return 1; }
    mkdir -p "$BIN"
    mv "$gobin/$binary" "$target.partial" && mv "$target.partial" "$target"
    rm -rf "$gobin"
}

k8s_tools_build_promql_check() {
    [[ -x $PROMQL_CHECK ]] && return
    k8s_tools_say "building scripts/promql-check"
    mkdir -p "$BIN"
    (cd "$K8S_TOOLS_ROOT/scripts/promql-check" && CGO_ENABLED=0 go build -trimpath -o "$PROMQL_CHECK.partial" .)
    mv "$PROMQL_CHECK.partial" "$PROMQL_CHECK"
}

k8s_tools_install_kubernetes_validate() {
    [[ -f $VENV/.installed ]] && return
    k8s_tools_say "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (offline Kubernetes schemas)"
    rm -rf "$VENV"
    uv venv --quiet --python python3 "$VENV"
    uv pip install --quiet --python "$VENV/bin/python" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    touch "$VENV/.installed"
}

# kubernetes-validate's schemas point at one shared file of definitions ("/api/_definitions.json",
# 1.3 MB), which kubeconform would load and compile again for every kind. Each schema here carries
# instead just the definitions it reaches, under its own "$defs": standalone, and fast to compile.
k8s_tools_build_schema_tree() {
    local target=$SCHEMA_TREE
    [[ -f $target/.complete ]] && return
    k8s_tools_say "building the kubeconform schema tree for Kubernetes $KUBERNETES_VERSION"
    rm -rf "$target" && mkdir -p "$target"
    "$PYTHON" - "$target" "$KUBERNETES_VERSION" <<'PY'
import json
import sys
from pathlib import Path

import kubernetes_validate

target, version = Path(sys.argv[1]), sys.argv[2]
source = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}-local-strict"
if not source.is_dir():
    sys.exit(f"kubernetes-validate has no schemas for Kubernetes {version}")
definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
SHARED = "/api/_definitions.json#/$defs/"
LOCAL = "#/$defs/"


def references(node):
    """Yield every definition name `node` refers to, rewriting shared references to local ones."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith((SHARED, LOCAL)):
            name = ref.split("/")[-1]
            node["$ref"] = LOCAL + name
            yield name
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


for path in source.glob("*.json"):
    if path.name == "_definitions.json":
        continue
    schema = json.loads(path.read_text())
    included = {}
    pending = list(references(schema))
    while pending:
        name = pending.pop()
        if name in included or name not in definitions:
            continue
        included[name] = json.loads(json.dumps(definitions[name]))
        pending.extend(references(included[name]))
    if included:
        schema["$defs"] = {**schema.get("$defs", {}), **included}
    (target / path.name).write_text(json.dumps(schema))
PY
    touch "$target/.complete"
}

k8s_tools_install() {
    if [[ -z $(k8s_tools_missing) ]]; then
        k8s_tools_say "kustomize $KUSTOMIZE_VERSION, kubeconform $KUBECONFORM_VERSION, promql-check, kubernetes-validate $KUBERNETES_VALIDATE_VERSION: present"
        return
    fi
    k8s_tools_install_go_tool "$KUSTOMIZE" kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
    k8s_tools_install_go_tool "$KUBECONFORM" kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
    k8s_tools_build_promql_check
    k8s_tools_install_kubernetes_validate
    k8s_tools_build_schema_tree
}
