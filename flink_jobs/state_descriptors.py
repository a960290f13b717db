"""Descriptors of the job's keyed states: our own bytes, expiring after a time to live.

Every keyed state the job keeps is a ``ValueState`` of bytes we encode ourselves, carried as
``PICKLED_BYTE_ARRAY`` (in thread mode ``PRIMITIVE_ARRAY(BYTE)`` is converted element by
element and fails on empty values), with a TTL refreshed on create and write and expired
values never returned. Expired entries are dropped by Flink's incremental cleanup (5 entries
checked per state access, the heap backend's default), set explicitly: PyFlink's implicit
default also builds a RocksDB compaction-filter strategy, whose constructor asks a Py4J gateway
for a ``java.time.Duration``; a TaskManager of a standalone cluster has no gateway, so the job's
``open()`` would fail there (the local mini-cluster hides this: its JVM is the client's gateway).
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

__all__ = ["BYTES", "bytes_state"]

BYTES = Types.PICKLED_BYTE_ARRAY()


def bytes_state(name: str, ttl_s: int) -> ValueStateDescriptor:
    """A ``ValueState[bytes]`` descriptor named ``name`` whose values expire ``ttl_s`` seconds
    after their last write."""
    descriptor = ValueStateDescriptor(name, BYTES)
    ttl = (
        StateTtlConfig.new_builder(Time.seconds(ttl_s))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .disable_cleanup_in_background()
        .cleanup_incrementally(5, False)
        .build()
    )
    descriptor.enable_time_to_live(ttl)
    return descriptor
