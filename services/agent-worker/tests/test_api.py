"""The worker's metrics page carries every series the production alerts read about workers."""

import pytest
from agentline_common.testing.alerts import alert_series, text_series
from agentline_worker.api import Probes

pytestmark = pytest.mark.unit


class IdleWorker:
    registered = True
    draining = False
    broker_connected = True
    active_sessions = 0


async def test_the_alerts_read_only_series_the_worker_exports() -> None:
    page = await Probes(worker=IdleWorker()).metrics(None)
    wanted = alert_series("agentline_worker_")
    assert wanted
    assert wanted <= text_series(page.text or "")
