"""Metric definitions, Prometheus configuration and dashboards of Flywheel."""
