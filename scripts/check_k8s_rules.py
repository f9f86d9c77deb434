"""Agentline's own deployment rules, beyond what the Kubernetes schemas can say.

Run by scripts/k8s-validate.sh (`make k8s-validate`), three ways:

    check_k8s_rules.py manifests --docs docs/operations.md RENDERED.yaml...
        every container has probes, requests and limits, runs as non-root with no privileges;
        the worker can finish a call before it is killed; every workload has a PodDisruptionBudget;
        the gateways and the registry have HPAs; no Secret values; Services, Ingress backends and
        HPA targets point at things that exist; the Ingress routes as ROUTES says; every alert
        has a runbook section in docs/operations.md and its PromQL parses (--promql-check).
    check_k8s_rules.py gateway deploy/local/nginx.conf
        starts the local gateway on free loopback ports in front of stand-in upstreams and checks
        every route of ROUTES, the correlation id and the WebSocket upgrade headers.
    check_k8s_rules.py dockerfiles ROOT
        each service's Dockerfile installs the package its pyproject.toml names, starts the console
        script that package declares, and copies only paths that exist.

Each prints one line per broken rule and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

# The API gateway's routes, shared by the Ingress and deploy/local/nginx.conf: path -> backend.
ROUTES: tuple[tuple[str, str], ...] = (
    ("/api/v1/agents/7f6c4b1e-2d3a-4c5b-8e9f-0a1b2c3d4e5f/test-token", "token-service"),
    ("/api/v1/agents/7f6c4b1e-2d3a-4c5b-8e9f-0a1b2c3d4e5f/test-token/", "agent-registry"),
    ("/api/v1/agents/7f6c4b1e-2d3a-4c5b-8e9f-0a1b2c3d4e5f", "agent-registry"),
    ("/api/v1/agents/7f6c4b1e-2d3a-4c5b-8e9f-0a1b2c3d4e5f/sessions?limit=5", "agent-registry"),
    ("/api/v1/agents/7f6c4b1e-2d3a-4c5b-8e9f-0a1b2c3d4e5f/phone-numbers/%2B15550100", "agent-registry"),
    ("/api/v1/voice/twilio/incoming", "telephony-gateway"),
    ("/api/v1/voice/twilio/status", "telephony-gateway"),
    ("/api/v1/livekit/webhook", "token-service"),
    ("/api/v1/auth/login", "agent-registry"),
    ("/api/v1/orgs", "agent-registry"),
    ("/api/v1/.well-known/jwks.json", "agent-registry"),
    ("/.well-known/jwks.json", "agent-registry"),
    ("/", "console"),
    ("/login", "console"),
    ("/agents/7f6c4b1e-2d3a-4c5b-8e9f-0a1b2c3d4e5f", "console"),
    ("/_next/static/chunks/main.js", "console"),
)

HTTP_SERVICES = ("agent-registry", "token-service", "telephony-gateway")
NEEDS_HPA = ("agent-registry", "token-service", "telephony-gateway", "agent-worker")
WORKER = "agent-worker"
MIN_WORKER_GRACE_SECONDS = 600
LONG_RUNNING_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
WORKLOAD_KINDS = (*LONG_RUNNING_KINDS, "Job", "CronJob")
OWN_IMAGE = re.compile(r"(^|/)agentline/")


@dataclass
class Report:
    """Broken rules, one line each, named by where they were found."""

    failures: list[str] = field(default_factory=list)

    def fail(self, where: str, message: str) -> None:
        self.failures.append(f"FAIL {where}: {message}")

    def finish(self, what: str) -> int:
        for line in self.failures:
            print(line)
        if self.failures:
            print(f"{what}: {len(self.failures)} rule(s) broken")
            return 1
        print(f"{what}: all rules hold")
        return 0


# --- manifests -------------------------------------------------------------------------------


def load_documents(paths: list[Path]) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in paths:
        with path.open() as stream:
            documents.extend(doc for doc in yaml.safe_load_all(stream) if doc)
    return documents


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload, wherever its kind keeps it."""
    spec = resource.get("spec", {})
    if resource["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    elif resource["kind"] not in WORKLOAD_KINDS:
        return None
    found: dict[str, Any] | None = spec.get("template", {}).get("spec")
    return found


def pod_labels(resource: dict[str, Any]) -> dict[str, str]:
    return resource.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {}) or {}


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def check_container(
    report: Report, *, where: str, container: dict[str, Any], pod: dict[str, Any], probes: bool
) -> None:
    """Probes, resources and a locked-down security context for one container."""
    if probes:
        for probe in ("livenessProbe", "readinessProbe"):
            if probe not in container:
                report.fail(where, f"no {probe}")
    resources = container.get("resources", {})
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(section) or {}):
                report.fail(where, f"no {resource} in resources.{section}")
    pod_security = pod.get("securityContext", {}) or {}
    security = container.get("securityContext", {}) or {}
    run_as_non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
    if run_as_non_root is not True:
        report.fail(where, "runAsNonRoot is not true")
    if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
        report.fail(where, "runAsUser is 0 (root)")
    if security.get("allowPrivilegeEscalation") is not False:
        report.fail(where, "allowPrivilegeEscalation is not false")
    if security.get("privileged") is True:
        report.fail(where, "privileged")
    if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
        report.fail(where, "capabilities do not drop ALL")
    seccomp = security.get("seccompProfile") or pod_security.get("seccompProfile") or {}
    if seccomp.get("type") != "RuntimeDefault":
        report.fail(where, "seccompProfile is not RuntimeDefault")
    image = container.get("image", "")
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        report.fail(where, f"image {image!r} has no pinned tag")
    if OWN_IMAGE.search(image) and security.get("readOnlyRootFilesystem") is not True:
        report.fail(where, "Agentline's own image without readOnlyRootFilesystem")


def check_workloads(report: Report, documents: list[dict[str, Any]]) -> None:
    for resource in documents:
        pod = pod_spec(resource)
        if pod is None:
            continue
        name = f"{resource['kind']}/{resource['metadata']['name']}"
        long_running = resource["kind"] in LONG_RUNNING_KINDS
        for container in pod.get("containers", []):
            check_container(
                report,
                where=f"{name} container {container['name']}",
                container=container,
                pod=pod,
                probes=long_running,
            )
        for container in pod.get("initContainers", []) or []:
            check_container(
                report,
                where=f"{name} init container {container['name']}",
                container=container,
                pod=pod,
                probes=False,
            )
        if pod.get("automountServiceAccountToken") is not False:
            report.fail(name, "automountServiceAccountToken is not false")


def probe_path(container: dict[str, Any], probe: str) -> str | None:
    return ((container.get(probe) or {}).get("httpGet") or {}).get("path")


def check_agentline_services(report: Report, documents: list[dict[str, Any]]) -> None:
    """Our services' probes hit /healthz and /readyz; the worker outlives a call; HPAs exist."""
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    config = {d["metadata"]["name"]: d.get("data", {}) for d in documents if d["kind"] == "ConfigMap"}
    for name in (*HTTP_SERVICES, WORKER):
        deployment = deployments.get(name)
        if deployment is None:
            report.fail(f"Deployment/{name}", "missing")
            continue
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        if probe_path(container, "livenessProbe") != "/healthz":
            report.fail(f"Deployment/{name}", "livenessProbe is not GET /healthz")
        if probe_path(container, "readinessProbe") != "/readyz":
            report.fail(f"Deployment/{name}", "readinessProbe is not GET /readyz")

    worker = deployments.get(WORKER)
    if worker is not None:
        check_worker(report, worker=worker, config=config)

    hpa_targets = {
        h["spec"]["scaleTargetRef"]["name"]
        for h in documents
        if h["kind"] == "HorizontalPodAutoscaler" and h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    }
    for name in NEEDS_HPA:
        if name not in hpa_targets:
            report.fail(f"Deployment/{name}", "no HorizontalPodAutoscaler")
    for target in hpa_targets - deployments.keys():
        report.fail(f"HorizontalPodAutoscaler/{target}", "targets a Deployment that does not exist")

    jobs = [d for d in documents if d["kind"] == "Job"]
    if not any(
        c.get("args") == ["migrate"] and "agent-registry" in c.get("image", "")
        for job in jobs
        for c in job["spec"]["template"]["spec"]["containers"]
    ):
        report.fail("Job/agent-registry-migrate", "no Job runs `agentline-registry migrate`")


def check_worker(report: Report, *, worker: dict[str, Any], config: dict[str, dict[str, str]]) -> None:
    """SIGTERM drains: the grace period must cover the worker's own drain timeout.

    No preStop pause: LiveKit dispatches over the worker's own connection, not through a Service, so
    only SIGTERM (which makes the worker refuse new jobs) stops dispatches; a pause would only delay it.
    """
    where = f"Deployment/{WORKER}"
    pod = worker["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < MIN_WORKER_GRACE_SECONDS:
        report.fail(where, f"terminationGracePeriodSeconds {grace} < {MIN_WORKER_GRACE_SECONDS}")
    container = pod["containers"][0]
    drain = None
    for source in container.get("envFrom", []):
        name = (source.get("configMapRef") or {}).get("name")
        if name in config and "DRAIN_TIMEOUT_SECONDS" in config[name]:
            drain = int(config[name]["DRAIN_TIMEOUT_SECONDS"])
    if drain is None:
        report.fail(where, "DRAIN_TIMEOUT_SECONDS is not set from a ConfigMap")
    elif drain >= grace:
        report.fail(where, f"drain {drain}s does not fit in terminationGracePeriodSeconds {grace}")


def check_disruption_budgets(report: Report, documents: list[dict[str, Any]]) -> None:
    budgets = [d for d in documents if d["kind"] == "PodDisruptionBudget"]
    for resource in documents:
        if resource["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = pod_labels(resource)
        if not any(selector_matches(b["spec"].get("selector", {}), labels) for b in budgets):
            report.fail(f"{resource['kind']}/{resource['metadata']['name']}", "no PodDisruptionBudget")


def check_no_secret_values(report: Report, documents: list[dict[str, Any]]) -> None:
    for resource in documents:
        if resource["kind"] == "Secret" and (resource.get("data") or resource.get("stringData")):
            report.fail(f"Secret/{resource['metadata']['name']}", "secret values in the repository")


def check_references(report: Report, documents: list[dict[str, Any]]) -> None:
    """Services select pods that exist and name their ports; Ingress backends exist."""
    templates = [(pod_labels(d), pod_spec(d) or {}) for d in documents if d["kind"] in LONG_RUNNING_KINDS]
    services: dict[str, set[str | int]] = {}
    for service in (d for d in documents if d["kind"] == "Service"):
        name = service["metadata"]["name"]
        services[name] = {p.get("name") for p in service["spec"]["ports"]} | {
            p["port"] for p in service["spec"]["ports"]
        }
        selector = service["spec"].get("selector")
        matches = [
            spec
            for labels, spec in templates
            if selector and selector_matches({"matchLabels": selector}, labels)
        ]
        if not matches:
            report.fail(f"Service/{name}", "selects no pod template")
            continue
        container_ports = {
            p.get("name") for spec in matches for c in spec["containers"] for p in c.get("ports", [])
        } | {p["containerPort"] for spec in matches for c in spec["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if target not in container_ports:
                report.fail(f"Service/{name}", f"targetPort {target!r} is no container port")
    for ingress in (d for d in documents if d["kind"] == "Ingress"):
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]
                port = backend["port"].get("name", backend["port"].get("number"))
                if backend["name"] not in services:
                    report.fail(f"Ingress/{ingress['metadata']['name']}", f"no Service {backend['name']}")
                elif port not in services[backend["name"]]:
                    report.fail(
                        f"Ingress/{ingress['metadata']['name']}",
                        f"Service {backend['name']} has no port {port!r}",
                    )


def ingress_backend(ingresses: list[dict[str, Any]], url: str) -> str | None:
    """The backend ingress-nginx picks for `url`: with use-regex every path is a case-insensitive
    regex anchored at the start, tried longest first; without it, Prefix paths match by segment."""
    path_only = url.split("?", 1)[0]
    candidates: list[tuple[int, str]] = []
    for ingress in ingresses:
        regex = (ingress["metadata"].get("annotations") or {}).get(
            "nginx.ingress.kubernetes.io/use-regex"
        ) == "true"
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                pattern = path["path"]
                if regex:
                    hit = re.match(pattern, path_only, re.IGNORECASE) is not None
                elif path["pathType"] == "Exact":
                    hit = path_only == pattern
                else:
                    prefix = pattern.rstrip("/")
                    hit = path_only == prefix or path_only.startswith(prefix + "/") or prefix == ""
                if hit:
                    candidates.append((len(pattern), path["backend"]["service"]["name"]))
    if not candidates:
        return None
    return max(candidates, key=lambda candidate: candidate[0])[1]


def check_routes(report: Report, documents: list[dict[str, Any]]) -> None:
    ingresses = [d for d in documents if d["kind"] == "Ingress"]
    if not ingresses:
        report.fail("Ingress", "the API gateway is missing")
        return
    for url, expected in ROUTES:
        got = ingress_backend(ingresses, url)
        if got != expected:
            report.fail("Ingress", f"{url} goes to {got}, not {expected}")


def check_network_policies(report: Report, documents: list[dict[str, Any]]) -> None:
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    if not any(
        p["spec"].get("podSelector") == {}
        and not p["spec"].get("ingress")
        and "Ingress" in p["spec"].get("policyTypes", [])
        for p in policies
    ):
        report.fail("NetworkPolicy", "no default deny of ingress")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def check_alerts(report: Report, documents: list[dict[str, Any]], docs: Path | None) -> None:
    rules = [d for d in documents if d["kind"] == "PrometheusRule"]
    anchors: set[str] = set()
    if docs is not None:
        anchors = {
            github_anchor(line.lstrip("#")) for line in docs.read_text().splitlines() if line.startswith("#")
        }
    for resource in rules:
        for group in resource["spec"]["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                where = f"PrometheusRule/{resource['metadata']['name']} alert {rule['alert']}"
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    report.fail(where, "no severity label (critical, warning or info)")
                annotations = rule.get("annotations", {})
                for key in ("summary", "description", "runbook_url"):
                    if not annotations.get(key):
                        report.fail(where, f"no {key} annotation")
                runbook = annotations.get("runbook_url", "")
                if docs is not None and "#" in runbook and runbook.split("#", 1)[1] not in anchors:
                    report.fail(where, f"runbook {runbook} has no section in {docs}")


def check_promql(report: Report, documents: list[dict[str, Any]], promql_check: Path) -> None:
    """Every rule's expression parses with Prometheus' own parser (scripts/promql-check)."""
    expressions = [
        {
            "name": f"PrometheusRule/{d['metadata']['name']} {r.get('alert') or r.get('record')}",
            "expr": str(r["expr"]),
        }
        for d in documents
        if d["kind"] == "PrometheusRule"
        for group in d["spec"]["groups"]
        for r in group["rules"]
    ]
    if not expressions:
        return
    answer = subprocess.run(  # noqa: S603 (our own checker, built by k8s-validate.sh)
        [str(promql_check)], input=json.dumps(expressions), capture_output=True, text=True, check=False
    )
    for line in answer.stdout.splitlines():
        if line.startswith("FAIL "):
            where, _, message = line.removeprefix("FAIL ").partition(": ")
            report.fail(where, f"PromQL does not parse: {message}")
    if answer.returncode not in (0, 1):
        report.fail("promql-check", answer.stderr.strip() or f"exited with {answer.returncode}")


def manifests(paths: list[Path], docs: Path | None, promql_check: Path | None) -> int:
    documents = load_documents(paths)
    report = Report()
    check_workloads(report, documents)
    check_agentline_services(report, documents)
    check_disruption_budgets(report, documents)
    check_no_secret_values(report, documents)
    check_references(report, documents)
    check_routes(report, documents)
    check_network_policies(report, documents)
    check_alerts(report, documents, docs)
    if promql_check is not None:
        check_promql(report, documents, promql_check)
    return report.finish(f"rules on {', '.join(str(p) for p in paths)} ({len(documents)} resources)")


# --- the local gateway -----------------------------------------------------------------------

NGINX_UPSTREAMS = {
    "agent_registry": "agent-registry",
    "token_service": "token-service",
    "telephony_gateway": "telephony-gateway",
    "console": "console",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stand_in(name: str) -> ThreadingHTTPServer:
    """An upstream that answers every request with its own name and the headers it received."""

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            body = json.dumps(
                {
                    "upstream": name,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the checker prints its own findings."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def rewrite_ports(conf: str, *, listen: int, upstreams: dict[str, int]) -> str:
    """The same configuration, listening on `listen`, with each upstream on its stand-in's port."""
    conf, listens = re.subn(r"listen\s+127\.0\.0\.1:\d+;", f"listen 127.0.0.1:{listen};", conf)
    if listens != 1:
        raise ValueError("expected exactly one `listen 127.0.0.1:PORT;`")
    for upstream, port in upstreams.items():
        conf, found = re.subn(
            rf"(upstream\s+{upstream}\s*\{{\s*server\s+)127\.0\.0\.1:\d+",
            rf"\g<1>127.0.0.1:{port}",
            conf,
        )
        if found != 1:
            raise ValueError(f"expected one upstream {upstream} on 127.0.0.1")
    return conf


def wait_for_port(port: int, *, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nginx did not listen on {port} within {timeout} s")


def ask(port: int, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", url, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if response.status == 200 else {}
    finally:
        connection.close()


@dataclass
class RunningGateway:
    port: int
    process: subprocess.Popen[bytes]


def start_gateway(conf_path: Path, prefix: Path, upstreams: dict[str, int]) -> RunningGateway:
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(rewrite_ports(conf_path.read_text(), listen=port, upstreams=upstreams))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    process = subprocess.Popen(  # noqa: S603 (our own nginx binary and config)
        [nginx, "-p", str(prefix), "-c", str(conf), "-e", "stderr"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, process=process)
    except (RuntimeError, TimeoutError):
        process.kill()
        _, stderr = process.communicate()
        raise RuntimeError(stderr.decode(errors="replace")) from None
    return RunningGateway(port, process)


def gateway(conf_path: Path) -> int:
    report = Report()
    servers = {upstream: stand_in(name) for upstream, name in NGINX_UPSTREAMS.items()}
    with tempfile.TemporaryDirectory(prefix="agentline-gateway-") as prefix:
        running = start_gateway(conf_path, Path(prefix), {u: s.server_address[1] for u, s in servers.items()})
        try:
            for url, expected in ROUTES:
                status, answer = ask(running.port, url)
                if status != 200 or answer.get("upstream") != expected:
                    report.fail("gateway", f"{url} went to {answer.get('upstream', status)}, not {expected}")
                elif answer["path"] != url:
                    report.fail("gateway", f"{url} reached {expected} as {answer['path']}")
            _, answer = ask(running.port, "/api/v1/orgs", {"X-Correlation-ID": "kept-by-gateway"})
            if answer.get("headers", {}).get("x-correlation-id") != "kept-by-gateway":
                report.fail("gateway", "the caller's X-Correlation-ID is not passed on")
            _, answer = ask(running.port, "/api/v1/orgs")
            if not re.fullmatch(r"[0-9a-f]{32}", answer.get("headers", {}).get("x-correlation-id", "")):
                report.fail("gateway", "no X-Correlation-ID is made for a request without one")
            _, answer = ask(
                running.port, "/_next/webpack-hmr", {"Upgrade": "websocket", "Connection": "Upgrade"}
            )
            headers = answer.get("headers", {})
            if headers.get("upgrade") != "websocket" or headers.get("connection", "").lower() != "upgrade":
                report.fail("gateway", "WebSocket upgrade headers are not passed on")
            _, answer = ask(running.port, "/api/v1/orgs", {"Host": "agentline.test:8080"})
            if answer.get("headers", {}).get("x-forwarded-host") != "agentline.test:8080":
                report.fail("gateway", "X-Forwarded-Host (Twilio's signed URL) is not passed on")
        finally:
            running.process.terminate()
            running.process.wait(timeout=10)
            for server in servers.values():
                server.shutdown()
    return report.finish(f"gateway {conf_path} ({len(ROUTES)} routes)")


# --- Dockerfiles -----------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not logical:
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        if logical.strip():
            instruction, _, arguments = logical.strip().partition(" ")
            yield instruction.upper(), arguments.strip()
        logical = ""


def check_dockerfile_copies(report: Report, *, root: Path, dockerfile: Path) -> None:
    for instruction, arguments in dockerfile_instructions(dockerfile):
        if instruction != "COPY" or "--from=" in arguments:
            continue
        sources = [a for a in arguments.split() if not a.startswith("--")][:-1]
        for source in sources:
            if not (root / source).exists():
                report.fail(str(dockerfile), f"COPY source {source} does not exist")


def check_python_dockerfile(report: Report, *, root: Path, service: Path, uv_version: str | None) -> None:
    dockerfile = service / "Dockerfile"
    where = str(dockerfile.relative_to(root))
    if not dockerfile.exists():
        report.fail(where, "missing")
        return
    project = tomllib.loads((service / "pyproject.toml").read_text())["project"]
    text = dockerfile.read_text()
    packages = re.findall(r"--package\s+(\S+)", text)
    if packages != [project["name"]]:
        report.fail(where, f"installs {packages}, but the package is {project['name']}")
    if "--frozen" not in text or "--no-dev" not in text:
        report.fail(where, "uv sync without --frozen --no-dev (not from the lock file)")
    entrypoints = [a for i, a in dockerfile_instructions(dockerfile) if i == "ENTRYPOINT"]
    scripts = project.get("scripts", {})
    if not entrypoints or json.loads(entrypoints[-1])[0] not in scripts:
        report.fail(where, f"ENTRYPOINT {entrypoints[-1:]} is none of the console scripts {sorted(scripts)}")
    check_common_dockerfile(report, where=where, dockerfile=dockerfile)
    pinned = re.search(r"astral-sh/uv:(\d+\.\d+)", text)
    if pinned is None:
        report.fail(where, "the uv image is not pinned to a version")
    elif uv_version is not None and tuple(map(int, pinned.group(1).split("."))) < tuple(
        map(int, uv_version.split(".")[:2])
    ):
        report.fail(
            where, f"uv {pinned.group(1)} in the image is older than uv {uv_version} that wrote uv.lock"
        )
    check_dockerfile_copies(report, root=root, dockerfile=dockerfile)


def check_common_dockerfile(report: Report, *, where: str, dockerfile: Path) -> None:
    instructions = list(dockerfile_instructions(dockerfile))
    stages = [a for i, a in instructions if i == "FROM"]
    if len(stages) < 2:
        report.fail(where, "not a multi-stage build")
    users = [a for i, a in instructions if i == "USER"]
    if not users or not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]):
        report.fail(where, "the last USER is not a numeric non-root user")


def local_uv_version() -> str | None:
    """The version of the uv that manages uv.lock here; images must not bring an older one."""
    uv = shutil.which("uv")
    if uv is None:
        return None
    answer = subprocess.run([uv, "--version"], capture_output=True, text=True, check=False)  # noqa: S603
    found = re.search(r"(\d+\.\d+\.\d+)", answer.stdout)
    return found.group(1) if found else None


def dockerfiles(root: Path) -> int:
    report = Report()
    uv_version = local_uv_version()
    services = sorted(p.parent for p in (root / "services").glob("*/pyproject.toml"))
    if not services:
        report.fail("services", "no service packages found")
    for service in services:
        check_python_dockerfile(report, root=root, service=service, uv_version=uv_version)
    console = root / "frontend" / "Dockerfile"
    if not console.exists():
        report.fail("frontend/Dockerfile", "missing")
    else:
        check_common_dockerfile(report, where="frontend/Dockerfile", dockerfile=console)
        check_dockerfile_copies(report, root=root, dockerfile=console)
        next_config = "".join(p.read_text() for p in (root / "frontend").glob("next.config.*"))
        if not re.search(r"output:\s*[\"']standalone[\"']", next_config):
            report.fail("frontend/next.config", 'no output: "standalone", which the image runs')
    if not (root / ".dockerignore").exists():
        report.fail(".dockerignore", "missing: every build would send .git and node_modules")
    return report.finish(f"Dockerfiles under {root} ({len(services)} services + console)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    manifests_parser = commands.add_parser("manifests")
    manifests_parser.add_argument("--docs", type=Path)
    manifests_parser.add_argument("--promql-check", type=Path)
    manifests_parser.add_argument("rendered", type=Path, nargs="+")
    gateway_parser = commands.add_parser("gateway")
    gateway_parser.add_argument("conf", type=Path)
    dockerfiles_parser = commands.add_parser("dockerfiles")
    dockerfiles_parser.add_argument("root", type=Path)
    args = parser.parse_args()
    if args.command == "manifests":
        return manifests(args.rendered, args.docs, args.promql_check)
    if args.command == "gateway":
        return gateway(args.conf.resolve())
    return dockerfiles(args.root.resolve())


if __name__ == "__main__":
    sys.exit(main())
