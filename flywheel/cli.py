"""The ``flywheel`` command: send and replay events, read lists, run the stack or the job.

Settings come from ``FLYWHEEL_*`` environment variables (see :mod:`flywheel.settings`); an
invalid one prints its message and exits with status 2. ``run`` and ``job`` import their
modules lazily, so the light commands start without loading Flink.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from flywheel.settings import ACTIONS, Settings, SettingsError, load_settings

__all__ = ["build_parser", "main"]

_DATASETS = ("completejourney", "otto", "synthetic")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process arguments), run the subcommand, return its status."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"flywheel: {exc}", file=sys.stderr)
        return 2
    from kafka.errors import KafkaError
    from redis.exceptions import RedisError

    from connectors.producer import DeliveryError

    try:
        return int(args.handler(settings, args))
    except KeyboardInterrupt:
        print("flywheel: interrupted", file=sys.stderr)
        return 130
    except (KafkaError, RedisError, DeliveryError) as exc:
        print(f"flywheel {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="flywheel",
        description="Real-time recommendations: Kafka events -> PyFlink online MF -> Redis.",
        epilog="Configuration comes from FLYWHEEL_* environment variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_send(commands)
    _add_replay(commands)
    _add_list(commands)
    _add_features(commands)
    _add_run(commands)
    _add_job(commands)
    _add_api(commands)
    _add_ab_report(commands)
    _add_simulate(commands)
    return parser


def _add_send(commands: Any) -> None:
    send = commands.add_parser("send", help="send one event to the events topic")
    send.add_argument("--user", required=True, help="raw user id (pseudonymised by the job)")
    send.add_argument("--item", required=True, help="item id")
    send.add_argument("--action", required=True, choices=ACTIONS, help="what the user did")
    send.add_argument("--ts", type=int, help="event time, epoch ms (default: now)")
    send.add_argument("--scene", help="page or placement, e.g. home, product, cart")
    send.add_argument("--category", help="item category")
    send.add_argument("--brand", help="item brand")
    send.add_argument("--price", type=float, help="item price")
    send.add_argument("--event-id", help="event id (default: a random one)")
    send.add_argument("--topic", help="topic (default: FLYWHEEL_EVENTS_TOPIC)")
    send.set_defaults(handler=_send)


def _add_replay(commands: Any) -> None:
    replay = commands.add_parser(
        "replay",
        help="replay a file or data set into the events topic",
        description="Replay events from PATH (CSV, JSONL or parquet; or an OTTO jsonl file "
        "with --dataset otto) or from a built-in data set, in timestamp order.",
    )
    replay.add_argument("path", nargs="?", metavar="PATH", help="file to replay")
    replay.add_argument("--dataset", choices=_DATASETS, help="built-in data set instead of PATH")
    columns = replay.add_argument_group("columns of PATH (default: the event field names)")
    columns.add_argument("--user-col", default="user_id", help="user id column")
    columns.add_argument("--item-col", default="item_id", help="item id column")
    columns.add_argument("--action-col", default="action", help="action column, if any")
    columns.add_argument("--ts-col", default="ts", help="time column: epoch s/ms or datetime")
    columns.add_argument("--event-id-col", default="event_id", help="event id column, if any")
    columns.add_argument(
        "--default-action", default="purchase", choices=ACTIONS, help="when there is no action"
    )
    columns.add_argument(
        "--action-map", type=_action_map, default={}, help="rename actions: clicks=click,..."
    )
    replay.add_argument("--rate", type=float, help="events per second (default: unpaced)")
    replay.add_argument("--limit", type=int, help="send at most N events")
    replay.add_argument("--retime", action="store_true", help="set ts to the send time")
    synthetic = replay.add_argument_group("--dataset synthetic")
    synthetic.add_argument("--users", type=int, default=10_000, help="number of shoppers")
    synthetic.add_argument("--items", type=int, default=20_000, help="number of items")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed")
    replay.add_argument("--topic", help="topic (default: FLYWHEEL_EVENTS_TOPIC)")
    replay.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    replay.set_defaults(handler=_replay)


def _add_list(commands: Any) -> None:
    show = commands.add_parser("list", help="print a user's top-N list from Redis")
    show.add_argument("user", metavar="USER", help="raw user id (or pseudonym, see below)")
    show.add_argument("--scene", default="home", help="scene of the list (default: home)")
    show.add_argument("--pseudonymised", action="store_true", help="USER is a pseudonym")
    show.set_defaults(handler=_list)


def _add_features(commands: Any) -> None:
    features = commands.add_parser("features", help="print a user's windowed features")
    features.add_argument("user", metavar="USER", help="raw user id (or pseudonym)")
    features.add_argument("--pseudonymised", action="store_true", help="USER is a pseudonym")
    features.set_defaults(handler=_features)


def _add_run(commands: Any) -> None:
    run = commands.add_parser("run", help="start the local stack, the job and traffic")
    run.add_argument(
        "--traffic",
        choices=("synthetic", "completejourney", "simulator", "none"),
        default="synthetic",
        help="events to generate while running (default: synthetic); simulator: closed-loop "
        "shoppers using the API (see `flywheel simulate`), --rate counts all their events",
    )
    run.add_argument("--rate", type=float, default=200.0, help="traffic events/s (default 200)")
    run.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop SECONDS after the job is up; exit 0 only if it processed events and wrote "
        "lists (for scripted smoke runs; default: run until Ctrl-C)",
    )
    run.set_defaults(handler=_run)


def _add_job(commands: Any) -> None:
    job = commands.add_parser("job", help="run the PyFlink recommendation job")
    job.add_argument("--restore", metavar="PATH", help="checkpoint or savepoint to restore")
    job.set_defaults(handler=_job)


def _add_api(commands: Any) -> None:
    api = commands.add_parser("api", help="run the recommendation API (HTTP, OpenAPI at /docs)")
    api.add_argument("--host", help="address to bind (default: FLYWHEEL_API_HOST)")
    api.add_argument("--port", type=int, help="port (default: FLYWHEEL_API_PORT)")
    api.set_defaults(handler=_api)


def _add_simulate(commands: Any) -> None:
    sim = commands.add_parser(
        "simulate",
        help="closed-loop simulated shoppers against the running API",
        description="Simulated shoppers with hidden tastes ask the API for their home list, "
        "react to it (click, add to cart, purchase) and browse on their own; every event goes "
        "through POST /v1/events. Prints CTR per arm; writes results.json and ctr_by_arm.png.",
    )
    sim.add_argument("--api", help="API base URL (default: from FLYWHEEL_API_HOST/PORT)")
    sim.add_argument("--duration", type=_positive, default=300.0, help="seconds (default 300)")
    sim.add_argument("--rate", type=_positive, default=30.0, help="visits/s (default 30)")
    world = sim.add_argument_group("the simulated shop (defaults: connectors.shoppers.SimConfig)")
    world.add_argument("--shoppers", type=int, help="population")
    world.add_argument("--items", type=int, help="catalogue size")
    world.add_argument("--categories", type=int, help="number of categories")
    world.add_argument("--organic", type=float, help="organic events per visit (mean)")
    world.add_argument("--seed", type=int, help="random seed")
    sim.add_argument(
        "--min-requests",
        type=int,
        help="count only lists of shoppers past their first N visits (default 0: all)",
    )
    sim.add_argument("--bucket", type=_positive, help="CTR time bucket, seconds (default 10)")
    sim.add_argument("--every", type=_positive, default=10.0, help="progress every N s")
    sim.add_argument("--out", default=None, help="output dir (default FLYWHEEL_VAR_DIR/simulator)")
    sim.set_defaults(handler=_simulate)


def _positive(text: str) -> float:
    """A float > 0.

    >>> _positive("2.5")
    2.5
    """
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _add_ab_report(commands: Any) -> None:
    report = commands.add_parser(
        "ab-report",
        help="per-arm CTR and conversion of an experiment, and their significance",
        description="Reads the per-arm counts the job writes to Redis and prints impressions, "
        "CTR and conversion with 95% intervals, and each arm against the control: z-test "
        "p-value and probability to beat it.",
    )
    report.add_argument("--experiment", help="experiment name (default: FLYWHEEL_EXPERIMENT's)")
    report.add_argument("--control", help="control arm (default: the experiment's first arm)")
    report.set_defaults(handler=_ab_report)


def _action_map(text: str) -> dict[str, str]:
    """Parse ``a=b,c=d``.

    >>> _action_map("clicks=click, carts=add_to_cart")
    {'clicks': 'click', 'carts': 'add_to_cart'}
    """
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected from=to[,from=to...], got {text!r}")
    return {source.strip(): target.strip() for source, target in pairs}


def _send(settings: Settings, args: argparse.Namespace) -> int:
    from connectors.producer import EventProducer

    event: dict[str, Any] = {
        "event_id": args.event_id or f"cli-{uuid.uuid4().hex}",
        "user_id": args.user,
        "item_id": args.item,
        "action": args.action,
        "ts": args.ts if args.ts is not None else time.time_ns() // 1_000_000,
    }
    optional = {"scene": args.scene, "category": args.category, "brand": args.brand}
    event |= {k: v for k, v in (optional | {"price": args.price}).items() if v is not None}
    with EventProducer(settings, args.topic) as producer:
        producer.send(event)
    print(f"sent {event['event_id']} to {producer.topic}")
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from connectors.producer import EventProducer
    from connectors.replay import replay

    if (args.path is None) == (args.dataset in (None, "otto")):
        print(
            "flywheel replay: give PATH, --dataset otto PATH, or another --dataset", file=sys.stderr
        )
        return 2
    events = _replay_events(settings, args)
    with EventProducer(settings, args.topic) as producer:
        stats = replay(
            events, producer, args.rate, args.limit, not args.no_progress, retime=args.retime
        )
    print(
        f"sent {stats.sent} events to {producer.topic} in {stats.elapsed_s:.1f} s "
        f"({stats.rate:.0f} events/s)"
    )
    return 0


def _replay_events(settings: Settings, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    from connectors import datasets

    if args.dataset == "synthetic":
        shop = datasets.SyntheticShop(
            args.users,
            args.items,
            seed=args.seed,
            start_ms=time.time_ns() // 1_000_000,
            rate_per_s=args.rate or 1000.0,
        )
        return shop.events(args.limit if args.limit is not None else 100_000)
    if args.dataset == "completejourney":
        return datasets.completejourney_events(args.limit, settings.var_dir / "data")
    if args.dataset == "otto":
        return datasets.otto_events(args.path)
    mapping = datasets.ColumnMapping(
        user=args.user_col,
        item=args.item_col,
        ts=args.ts_col,
        action=args.action_col,
        event_id=args.event_id_col,
    )
    return datasets.read_table(args.path, mapping, args.default_action, args.action_map)


def _list(settings: Settings, args: argparse.Namespace) -> int:
    from connectors.redis_lists import ListReader

    reader = ListReader(settings)
    try:
        rec = reader.get(args.user, args.scene, args.pseudonymised)
    finally:
        reader.close()
    if rec is None:
        print(f"no {args.scene!r} list for user {args.user!r}", file=sys.stderr)
        return 1
    age_s = (time.time_ns() // 1_000_000 - rec.written_ts) / 1000
    print(f"user {rec.user}  scene {rec.scene}  strategy {rec.strategy}  written {age_s:.1f} s ago")
    width = max([4, *(len(item) for item, _ in rec.items)])
    print(f"{'rank':>4}  {'item':<{width}}  score")
    for rank, (item, score) in enumerate(rec.items, start=1):
        print(f"{rank:>4}  {item:<{width}}  {score:.4f}")
    return 0


def _features(settings: Settings, args: argparse.Namespace) -> int:
    from connectors.redis_lists import ListReader

    reader = ListReader(settings)
    try:
        features = reader.features(args.user, args.pseudonymised)
    finally:
        reader.close()
    if features is None:
        print(f"no features for user {args.user!r}", file=sys.stderr)
        return 1
    print(orjson.dumps(features, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    return 0


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from deploy.run_stack import main as run_stack

    run_stack(settings, args)
    return 0


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    from connectors.api_client import ApiError
    from connectors.simulate import main as simulate

    if args.out is None:
        args.out = str(settings.var_dir / "simulator")
    try:
        return simulate(settings, args)
    except (ApiError, ValueError) as exc:
        print(f"flywheel simulate: {exc}", file=sys.stderr)
        return 1


def _ab_report(settings: Settings, args: argparse.Namespace) -> int:
    from flywheel.ab_report import run

    return run(settings, args.experiment, args.control)


def _job(settings: Settings, args: argparse.Namespace) -> int:
    from flink_jobs.job import main as run_job

    run_job(settings, args)
    return 0


def _api(settings: Settings, args: argparse.Namespace) -> int:
    overrides = {"api_host": args.host, "api_port": args.port}
    try:
        settings = settings.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        print(f"flywheel api: {exc}", file=sys.stderr)
        return 2
    from serving.app import serve

    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
