#!/usr/bin/env bash
# `make k8s-validate`: is what we ship to Kubernetes valid, and does it follow our own rules?
#
#  1. renders the kustomize base and every overlay under deploy/k8s/overlays;
#  2. validates every rendered resource against the Kubernetes OpenAPI schemas with kubeconform,
#     offline: the schemas come from the kubernetes-validate wheel (PyPI), turned into a local
#     schema tree once; our CRDs (PrometheusRule, ServiceMonitor) against deploy/k8s/schemas;
#  3. checks Agentline's own rules (scripts/check_k8s_rules.py manifests), the alerts' PromQL with
#     Prometheus' parser (scripts/promql-check);
#  4. proves both checks can fail: a manifest broken on purpose in a temporary directory must be
#     rejected by kubeconform and by each rule of the checker;
#  5. the local gateway: `nginx -t` on deploy/local/nginx.conf, then a real nginx with that file in
#     front of stand-in upstreams answers every route of the Ingress (and a broken copy must not);
#  6. the Dockerfiles install the packages and console scripts the pyproject files name.
#
# Tools go to $AGENTLINE_TOOLS (default /opt/agentline), versioned, installed once: kustomize and
# kubeconform through the Go module proxy, kubernetes-validate (schemas + PyYAML) from PyPI into a
# virtual environment. A second run installs nothing and takes a few seconds.
set -euo pipefail

KUSTOMIZE_VERSION=v5.7.1
KUBECONFORM_VERSION=v0.7.0
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VERSION=1.32.0

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${AGENTLINE_TOOLS:-/opt/agentline}
BIN=$TOOLS/bin
VENV=$TOOLS/venvs/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
SCHEMAS=$TOOLS/share/kubernetes-schemas/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
KUSTOMIZE=$BIN/kustomize-$KUSTOMIZE_VERSION
KUBECONFORM=$BIN/kubeconform-$KUBECONFORM_VERSION
PROMQL_CHECK=$BIN/promql-check-$(cat "$ROOT"/scripts/promql-check/{go.mod,go.sum,main.go} | sha256sum | cut -c1-12)
PYTHON=$VENV/bin/python

WORK=$(mktemp -d -t agentline-k8s-validate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

say() { printf '==> %s\n' "$*"; }
die() { printf 'k8s-validate: %s\n' "$*" >&2; exit 1; }

install_go_tool() {  # install_go_tool TARGET BINARY MODULE@VERSION
    local target=$1 binary=$2 module=$3
    [[ -x $target ]] && return
    command -v go >/dev/null || die "Go is needed to install $module (make setup installs it)"
    say "installing $module"
    local gobin
    gobin=$(mktemp -d "$WORK/gobin.XXXXXX")
    CGO_ENABLED=0 GOBIN=$gobin GOFLAGS=-mod=mod go install "$module"
    mkdir -p "$BIN"
    mv "$gobin/$binary" "$target.partial" && mv "$target.partial" "$target"
}

# Our PromQL checker (scripts/promql-check): Prometheus' parser, pinned by its go.sum.
build_promql_check() {
    [[ -x $PROMQL_CHECK ]] && return
    command -v go >/dev/null || die "Go is needed to build scripts/promql-check (make setup installs it)"
    say "building scripts/promql-check"
    mkdir -p "$BIN"
    (cd "$ROOT/scripts/promql-check" && CGO_ENABLED=0 go build -trimpath -o "$PROMQL_CHECK.partial" .)
    mv "$PROMQL_CHECK.partial" "$PROMQL_CHECK"
}

install_kubernetes_validate() {
    [[ -f $VENV/.installed ]] && return
    say "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (offline Kubernetes schemas)"
    rm -rf "$VENV"
    if command -v uv >/dev/null; then
        uv venv --quiet --python python3 "$VENV"
        uv pip install --quiet --python "$VENV/bin/python" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    else
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    fi
    touch "$VENV/.installed"
}

# kubernetes-validate's schemas point at one shared file of definitions ("/api/_definitions.json",
# 1.3 MB), which kubeconform would load and compile again for every kind. Each schema here carries
# instead just the definitions it reaches, under its own "$defs": standalone, and fast to compile.
build_schema_tree() {
    local target=$SCHEMAS/v$KUBERNETES_VERSION-standalone-strict
    [[ -f $target/.complete ]] && return
    say "building the kubeconform schema tree for Kubernetes $KUBERNETES_VERSION"
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

kubeconform() {
    "$KUBECONFORM" -strict -summary -kubernetes-version "$KUBERNETES_VERSION" \
        -schema-location "$SCHEMAS/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
        -schema-location "$ROOT/deploy/k8s/schemas/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
        "$@"
}

rules() { "$PYTHON" "$ROOT/scripts/check_k8s_rules.py" "$@"; }

install_go_tool "$KUSTOMIZE" kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
install_go_tool "$KUBECONFORM" kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
build_promql_check
install_kubernetes_validate
build_schema_tree

# 1-3: render, validate, check every overlay (and the base, which must stand on its own).
rendered=()
for dir in "$ROOT/deploy/k8s/base" "$ROOT"/deploy/k8s/overlays/*/; do
    dir=${dir%/}
    name=$(basename "$dir")
    say "render $name"
    "$KUSTOMIZE" build "$dir" >"$WORK/$name.yaml"
    say "validate $name against the Kubernetes $KUBERNETES_VERSION schemas"
    kubeconform "$WORK/$name.yaml"
    rendered+=("$WORK/$name.yaml")
done
say "Agentline's rules (on the overlays: the base alone has no namespace and no image tags)"
for file in "${rendered[@]:1}"; do
    rules manifests --docs "$ROOT/docs/operations.md" --promql-check "$PROMQL_CHECK" "$file"
done

# 4: the checks must be able to fail. A kustomization outside the repository breaks the dev
# overlay in one way per rule; kubeconform gets a resource that violates its schema.
say "self-test: broken manifests must be rejected"
mkdir -p "$WORK/broken"
dev_overlay=$(realpath --relative-to="$WORK/broken" "$ROOT/deploy/k8s/overlays/dev")
cat >"$WORK/broken/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $dev_overlay
patches:
  - target: {kind: Deployment, name: agent-worker}
    patch: |-
      - {op: replace, path: /spec/template/spec/terminationGracePeriodSeconds, value: 30}
      - {op: remove, path: /spec/template/spec/containers/0/lifecycle}
  - target: {kind: Deployment, name: token-service}
    patch: |-
      - {op: remove, path: /spec/template/spec/containers/0/readinessProbe}
      - {op: remove, path: /spec/template/spec/containers/0/resources/limits}
  - target: {kind: Deployment, name: telephony-gateway}
    patch: |-
      - {op: replace, path: /spec/template/spec/securityContext/runAsNonRoot, value: false}
      - {op: remove, path: /spec/template/spec/containers/0/securityContext/runAsNonRoot}
      - {op: replace, path: /spec/template/spec/containers/0/image, value: "agentline/telephony-gateway:latest"}
  - target: {kind: HorizontalPodAutoscaler, name: agent-registry}
    patch: |-
      - {op: replace, path: /spec/scaleTargetRef/name, value: registry}
  - target: {kind: PodDisruptionBudget, name: console}
    patch: |-
      - {op: replace, path: /spec/selector/matchLabels, value: {app.kubernetes.io/name: nothing}}
  - target: {kind: Ingress, name: agentline}
    patch: |-
      - {op: replace, path: /spec/rules/0/http/paths/0/path, value: "/api/v1/agents/test-token"}
EOF
"$KUSTOMIZE" build --load-restrictor LoadRestrictionsNone "$WORK/broken" >"$WORK/broken.yaml"
if rules manifests "$WORK/broken.yaml" >"$WORK/broken.out"; then
    cat "$WORK/broken.out"
    die "the rule checker accepted a broken manifest"
fi
for expected in \
    "Deployment/agent-worker: terminationGracePeriodSeconds 30 < 600" \
    "Deployment/agent-worker: no preStop hook" \
    "container token-service: no readinessProbe" \
    "container token-service: no cpu in resources.limits" \
    "container telephony-gateway: runAsNonRoot is not true" \
    "container telephony-gateway: image 'agentline/telephony-gateway:latest' has no pinned tag" \
    "Deployment/agent-registry: no HorizontalPodAutoscaler" \
    "HorizontalPodAutoscaler/registry: targets a Deployment that does not exist" \
    "Deployment/console: no PodDisruptionBudget" \
    "Ingress: /api/v1/agents/7f6c4b1e-2d3a-4c5b-8e9f-0a1b2c3d4e5f/test-token goes to agent-registry, not token-service"; do
    grep -qF -- "$expected" "$WORK/broken.out" || { cat "$WORK/broken.out"; die "the rule checker missed: $expected"; }
done
cat >"$WORK/schema-broken.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
spec:
  replicas: "two"
  selector:
    matchLabels: {app: broken}
  template:
    metadata:
      labels: {app: broken}
    spec:
      containers:
        - name: broken
          image: agentline/broken:1
          livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSecond: 10}
EOF
if kubeconform "$WORK/schema-broken.yaml" >"$WORK/schema-broken.out" 2>&1; then
    cat "$WORK/schema-broken.out"
    die "kubeconform accepted a Deployment that violates the schema"
fi
grep -q "periodSecond" "$WORK/schema-broken.out" && grep -q "replicas" "$WORK/schema-broken.out" \
    || { cat "$WORK/schema-broken.out"; die "kubeconform rejected the broken Deployment for the wrong reason"; }
echo '[{"name": "broken", "expr": "sum(rate(agentline_bus_publish_failures_total[5m]) > 0"}]' \
    | "$PROMQL_CHECK" >"$WORK/promql-broken.out" && die "promql-check accepted an unclosed parenthesis"
grep -q "unclosed left parenthesis" "$WORK/promql-broken.out" \
    || { cat "$WORK/promql-broken.out"; die "promql-check rejected the broken expression for the wrong reason"; }
say "self-test passed: the schema, rule and PromQL checks reject what they should"

# 5: the local gateway.
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || die "nginx is needed (make setup installs it)"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
say "local gateway: nginx -t and every route through a real nginx"
mkdir -p "$WORK/nginx"
"$NGINX" -t -q -p "$WORK/nginx" -c "$ROOT/deploy/local/nginx.conf" -e stderr
rules gateway "$ROOT/deploy/local/nginx.conf"
sed 's|location /api/v1/ {|location ^~ /api/v1/ {|' "$ROOT/deploy/local/nginx.conf" >"$WORK/nginx-broken.conf"
if rules gateway "$WORK/nginx-broken.conf" >"$WORK/nginx-broken.out"; then
    cat "$WORK/nginx-broken.out"
    die "the gateway check accepted a config that sends test-token requests to the registry"
fi

# 6: the images.
say "Dockerfiles"
rules dockerfiles "$ROOT"

say "k8s-validate: every overlay renders, validates and follows the rules"
