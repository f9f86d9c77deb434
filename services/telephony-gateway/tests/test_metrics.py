"""The telephony-gateway exports every series the production alerts read about it."""

import pytest
from agentline_common.testing.alerts import alert_series, exported_series
from agentline_telephony.metrics import GatewayMetrics

pytestmark = pytest.mark.unit


def test_the_alerts_read_only_series_the_gateway_exports() -> None:
    wanted = alert_series("agentline_telephony_") | alert_series("agentline_http_request_duration_seconds")
    assert wanted
    assert wanted <= exported_series(GatewayMetrics().registry)
