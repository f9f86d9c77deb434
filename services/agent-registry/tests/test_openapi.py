"""Schemathesis against the running registry (a real subprocess): no input makes it fail with a 5xx,
and every answer matches the published OpenAPI schema."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from agentline_common.testing.services import RegistryService

pytestmark = pytest.mark.integration

MAX_EXAMPLES = "8"


def _schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert found, "schemathesis is a dev dependency of agentline-registry; run uv sync --all-packages"
    return found


def test_no_input_makes_the_registry_fail(running_registry: RegistryService, tmp_path: Path) -> None:
    tenant = running_registry.new_tenant()
    completed = subprocess.run(  # noqa: S603 - our own test tool with our own arguments
        [
            _schemathesis(),
            "run",
            f"{running_registry.url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--max-examples",
            MAX_EXAMPLES,
            "--generation-deterministic",
            "--request-timeout",
            "10",
            "--header",
            f"Authorization: Bearer {tenant.token}",
            "--phases",
            "examples,coverage,fuzzing",
            "--suppress-health-check",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )
    report = completed.stdout[-6000:] + completed.stderr[-2000:]
    assert completed.returncode == 0, report
    tested = re.search(r"Tested: (\d+)", completed.stdout)
    assert tested is not None and int(tested.group(1)) >= 20, report  # of 25 operations
    assert running_registry.is_running
