"""Deployment helpers: the embedded local stack (Kafka-protocol broker, Redis, Prometheus)."""
