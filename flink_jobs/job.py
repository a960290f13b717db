"""Entry point of the streaming job: Kafka ``events`` -> validate -> per-user learning -> Redis.

Graph::

    KafkaSource(events) -> ParseEvents --side output--> KafkaSink(events.dlq)
                              |
                        key_by(user, read in Java)
                              |
    KafkaSource(item-sync) -> broadcast -> UserProcessor -> KafkaSink(item-sync)
                                                |    \\
                                                |     side output: one item-context record
                                                |     per learnable event, key_by(item in Java)
                                                |        -> ItemNeighbours -> Redis (product lists)
                                              Redis (lists, features, trending)

:func:`build` wires the graph into a given environment; :func:`configure` holds every Flink
setting derived from :class:`~flywheel.settings.Settings`; :func:`main` runs it (on a local
mini-cluster when started with ``flywheel job``, or on a cluster through ``flink run``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from flywheel.settings import DEV_HMAC_KEY, Settings, load_settings

__all__ = ["build", "configure", "main", "prepare_environment"]

_ROOT = Path(__file__).resolve().parent.parent


def prepare_environment() -> None:
    """Process environment the PyFlink gateway needs; call before the first PyFlink import.

    Thread mode runs Python inside the JVM, which must find our packages and the venv's
    site-packages; the mini-cluster loads the Prometheus reporter only from its classpath.
    """
    import pyflink

    site = Path(pyflink.__file__).resolve().parent.parent
    paths = [str(_ROOT), str(site), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    log_dir = os.environ.setdefault("FLINK_LOG_DIR", str(Path("var/logs/flink").resolve()))
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    jars = sorted((site / "pyflink" / "plugins" / "metrics-prometheus").glob("*.jar"))
    if jars:
        os.environ["HADOOP_CLASSPATH"] = str(jars[0])


def configure(settings: Settings):
    """The Flink :class:`~pyflink.common.Configuration` for ``settings``."""
    from pyflink.common import Configuration

    conf = Configuration()
    conf.set_string("python.execution-mode", settings.execution_mode)
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    conf.set_string("python.state.cache-size", "200000")
    conf.set_string("parallelism.default", str(settings.parallelism))
    if settings.checkpoint_interval_ms:
        directory = Path(settings.checkpoint_dir).resolve()
        conf.set_string("execution.checkpointing.interval", f"{settings.checkpoint_interval_ms} ms")
        conf.set_string("execution.checkpointing.dir", directory.as_uri())
        conf.set_string(
            "execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION"
        )
        conf.set_string("execution.checkpointing.num-retained", "3")
    if settings.restore_from:
        conf.set_string("execution.state-recovery.path", settings.restore_from)
    if settings.flink_metrics_port:
        conf.set_string(
            "metrics.reporter.prom.factory.class",
            "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        )
        conf.set_string("metrics.reporter.prom.port", str(settings.flink_metrics_port))
    return conf


def build(env, settings: Settings) -> None:
    """Add Flywheel's operators, sources and sinks to ``env``."""
    from pyflink.common import Types, WatermarkStrategy

    from flink_jobs.item_neighbours import ITEM_CONTEXT, ItemNeighbours
    from flink_jobs.parse import DEAD_LETTERS, ParseEvents
    from flink_jobs.user_processor import EVENT_TYPE, ITEMS_DESCRIPTOR, UserProcessor

    events = env.from_source(
        _source(settings, settings.events_topic, settings.consumer_group, settings.start_from),
        WatermarkStrategy.no_watermarks(),
        "events",
    ).uid("events-source")
    keyed_events = Types.ROW([Types.STRING(), EVENT_TYPE])  # Row(user, event): see _keyed
    parsed = (
        events.process(ParseEvents(settings), output_type=keyed_events).uid("parse").name("parse")
    )
    parsed.get_side_output(DEAD_LETTERS).sink_to(_sink(settings, settings.dlq_topic)).uid(
        "dlq-sink"
    )
    deltas = env.from_source(
        _source(settings, settings.item_sync_topic, None, "earliest"),
        WatermarkStrategy.no_watermarks(),
        "item-sync",
    ).uid("item-sync-source")
    keyed = _keyed(parsed._j_data_stream)
    out = (
        keyed.connect(deltas.broadcast(ITEMS_DESCRIPTOR))
        .process(UserProcessor(settings), output_type=Types.STRING())
        .uid("users")
        .name("users")
    )
    out.sink_to(_sink(settings, settings.item_sync_topic)).uid("item-sync-sink")
    (
        _keyed(out._j_data_stream.getSideOutput(ITEM_CONTEXT.get_java_output_tag()))
        .process(ItemNeighbours(settings))
        .uid("item-neighbours")
        .name("item-neighbours")
    )


def _keyed(j_stream):
    """``j_stream``, whose records are ``Row(key, value)`` with a string key, keyed by that key.

    PyFlink's ``key_by`` puts a Python operator in front of the key-by that builds these rows
    from a Python key selector (and ``get_side_output`` an identity Python map before it): two
    more entries into Python per record. Our operators emit the rows themselves
    (:class:`~flink_jobs.parse.ParseEvents`, the item-context side output of
    :class:`~flink_jobs.user_processor.UserProcessor`), so Java reads the key from field 0 and
    the keyed Python function receives ``value`` as it would after ``key_by``.
    """
    from pyflink.common import Types
    from pyflink.common.typeinfo import _from_java_type
    from pyflink.datastream.data_stream import DataStream, KeyedStream
    from pyflink.java_gateway import get_gateway

    selector = get_gateway().jvm.org.apache.flink.streaming.api.functions.python.KeyByKeySelector
    j_keyed = j_stream.keyBy(selector(), Types.ROW([Types.STRING()]).get_java_type_info())
    value_type = _from_java_type(j_stream.getType().getTypeAt(1))
    return KeyedStream(j_keyed, value_type, DataStream(j_stream))


def _source(settings: Settings, topic: str, group: str | None, start: str):
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource

    offsets = {
        "earliest": KafkaOffsetsInitializer.earliest(),
        "latest": KafkaOffsetsInitializer.latest(),
    }.get(start) or KafkaOffsetsInitializer.committed_offsets()
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap)
        .set_topics(topic)
        .set_starting_offsets(offsets)
        .set_value_only_deserializer(SimpleStringSchema())
        .set_property("partition.discovery.interval.ms", "10000")
        .set_property("fetch.max.wait.ms", "50")
    )
    builder = builder.set_group_id(group or f"{settings.consumer_group}-{topic}")
    return builder.build()


def _sink(settings: Settings, topic: str):
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream.connectors.base import DeliveryGuarantee
    from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema, KafkaSink

    schema = (
        KafkaRecordSerializationSchema.builder()
        .set_topic(topic)
        .set_value_serialization_schema(SimpleStringSchema())
        .build()
    )
    return (
        KafkaSink.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap)
        .set_record_serializer(schema)
        .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
        .set_property("linger.ms", "5")
        .build()
    )


def run(settings: Settings, local: bool = True) -> None:
    """Build and execute the job (blocks until it ends).

    ``local=True`` runs a mini-cluster in this process's PyFlink gateway, with this Python
    as the workers' interpreter. ``local=False`` is for ``flink run --python``: the cluster's
    own configuration (interpreter, reporters, checkpoint storage) applies.
    """
    from pyflink.datastream import StreamExecutionEnvironment

    if settings.hmac_key == DEV_HMAC_KEY:
        print("warning: FLYWHEEL_HMAC_KEY is the development default", file=sys.stderr)
    if local:
        # SIGTERM (from `make run`, or a dying parent) exits through atexit, which also
        # shuts down the PyFlink gateway JVM this process started.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        prepare_environment()
        env = StreamExecutionEnvironment.get_execution_environment(configure(settings))
        env.set_python_executable(sys.executable)
    else:
        env = StreamExecutionEnvironment.get_execution_environment()
        env.set_parallelism(settings.parallelism)
        if settings.checkpoint_interval_ms:
            env.enable_checkpointing(settings.checkpoint_interval_ms)
    build(env, settings)
    env.execute("flywheel")


def main(settings: Settings, args: argparse.Namespace | None = None) -> None:
    """``flywheel job``: run the job with ``settings`` (``--restore`` overrides restore_from)."""
    restore = getattr(args, "restore", None)
    if restore:
        settings = settings.with_overrides(restore_from=restore)
    run(settings)


if __name__ == "__main__":  # ``flink run --python flink_jobs/job.py`` on a cluster
    run(load_settings(), local=False)
