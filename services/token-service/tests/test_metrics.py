"""The token-service exports every series the production alerts read about it."""

import pytest
from agentline_common.testing.alerts import alert_series, exported_series
from agentline_token_service.metrics import Metrics

pytestmark = pytest.mark.unit


def test_the_alerts_read_only_series_the_token_service_exports() -> None:
    wanted = alert_series("agentline_test_token_") | alert_series("agentline_http_request_duration_seconds")
    assert wanted
    assert wanted <= exported_series(Metrics().registry)
