"""Which job metrics endpoint the API's /healthz checks."""

from __future__ import annotations

from flywheel.settings import load_settings
from serving.health import _job_metrics_url


def test_job_metrics_url_defaults_to_this_host_and_can_be_set() -> None:
    assert _job_metrics_url(load_settings(metrics_port=9500)) == "http://127.0.0.1:9500/metrics"
    bound = load_settings(metrics_port=9500, metrics_bind="10.0.0.7")
    assert _job_metrics_url(bound) == "http://10.0.0.7:9500/metrics"
    remote = load_settings(job_metrics_url="http://taskmanager:9464/metrics")
    assert _job_metrics_url(remote) == "http://taskmanager:9464/metrics"
