"""The recommendation API: serves lists from Redis, takes events and erasure requests to Kafka.

``flywheel api`` (or ``python -m serving``) runs it; :func:`serving.app.create_app` builds it.
"""
