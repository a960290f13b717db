"""Adapters between Flywheel and the outside world.

``producer`` sends shopper events to Kafka, ``datasets`` turns files and public data sets into
event streams, ``replay`` paces a stream into a producer, and ``redis_lists`` owns the Redis
key layout of the top-N lists (writer for the job, reader for frontends).
"""

__all__ = ["datasets", "producer", "redis_lists", "replay"]
