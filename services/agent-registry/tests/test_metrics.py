"""The registry exports every series the production alerts read about it."""

import pytest
from agentline_common.testing.alerts import alert_series, exported_series
from agentline_registry.metrics import RegistryMetrics

pytestmark = pytest.mark.unit


def test_the_alerts_read_only_series_the_registry_exports() -> None:
    wanted = alert_series("agentline_registry_")
    assert wanted
    assert wanted <= exported_series(RegistryMetrics().registry)
