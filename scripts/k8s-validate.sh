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
# The tools (kustomize, kubeconform, our PromQL checker, kubernetes-validate and the offline schema
# tree made from it) are installed by `make setup` (scripts/k8s-tools.sh, which pins their versions);
# this script installs nothing and stops at once, naming what is missing, when one is not there.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/k8s-tools.sh
source "$ROOT/scripts/k8s-tools.sh"

WORK=$(mktemp -d -t agentline-k8s-validate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

say() { printf '==> %s\n' "$*"; }
die() { printf 'k8s-validate: %s\n' "$*" >&2; exit 1; }

missing=$(k8s_tools_missing)
[[ -z $missing ]] || die "not installed (make setup installs them):
$missing"

kubeconform() {
    "$KUBECONFORM" -strict -summary -kubernetes-version "$KUBERNETES_VERSION" \
        -schema-location "$SCHEMAS/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
        -schema-location "$ROOT/deploy/k8s/schemas/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
        "$@"
}

rules() { "$PYTHON" "$ROOT/scripts/check_k8s_rules.py" "$@"; }

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
    "Deployment/agent-worker: drain 840s does not fit in terminationGracePeriodSeconds 30" \
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
