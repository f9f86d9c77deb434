"""The Prometheus series the production alerts query, and those a service exports, for tests that
check the two meet: an alert on a series nobody exports never fires, and nothing else notices."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

ALERT_RULES = Path(__file__).resolve().parents[5] / "deploy/k8s/overlays/prod/prometheusrule.yaml"
_SERIES = re.compile(r"\bagentline_[a-z0-9_]+")
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
}


def alert_series(prefix: str, rules: Path = ALERT_RULES) -> set[str]:
    """Every `agentline_*` series starting with `prefix` that an alert or recording rule reads."""
    found: set[str] = set()
    for document in yaml.safe_load_all(rules.read_text()):
        for group in document["spec"]["groups"]:
            for rule in group["rules"]:
                found.update(name for name in _SERIES.findall(str(rule["expr"])) if name.startswith(prefix))
    return found


def exported_series(registry: CollectorRegistry) -> set[str]:
    """The series names Prometheus scrapes from `registry`, labelled instruments with no sample yet
    included (a counter `x` is scraped as `x_total`, a histogram as `x_bucket`, `x_count`, `x_sum`)."""
    return {name for family in registry.collect() for name in _names(family.name, family.type)}


def text_series(exposition: str) -> set[str]:
    """The series names in a Prometheus text exposition (for a service that writes its own)."""
    return {
        name
        for family in text_string_to_metric_families(exposition)
        for name in _names(family.name, family.type)
    }


def _names(family: str, kind: str) -> tuple[str, ...]:
    suffixes = _SUFFIXES.get(kind)
    return tuple(family + suffix for suffix in suffixes) if suffixes else (family,)
