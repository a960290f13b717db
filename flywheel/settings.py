"""One typed settings object for every Flywheel process.

Values come from environment variables prefixed ``FLYWHEEL_`` (e.g. ``FLYWHEEL_REDIS_URL``)
or from their defaults below. :func:`load_settings` validates them once at start-up; an invalid
value raises :class:`SettingsError` whose message names the offending variable. The object is
frozen and passed down explicitly: no module reads ``os.environ`` on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from online_models.experiments import Experiment

__all__ = ["ACTIONS", "STRATEGIES", "Settings", "SettingsError", "load_settings"]

ACTIONS: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "impression", "forget")
"""Every action an event may carry: shopper actions in order of increasing intent, then
``impression`` (a list was shown) and ``forget`` (erase everything derived from the user)."""
STRATEGIES: tuple[str, ...] = ("online_mf", "trending")
"""Strategies the API can serve, and so the arms an experiment may compare."""

ENV_PREFIX = "FLYWHEEL_"
DEV_HMAC_KEY = "flywheel-dev-key-change-me"


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the environment variable."""


class Settings(BaseSettings):
    """Configuration of the job, the producers, the serving clients and the local stack."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # --- Kafka ---------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    events_topic: str = Field("events", description="topic of shopper events, keyed by user")
    dlq_topic: str = Field("events.dlq", description="dead-letter topic: payload + reason")
    item_sync_topic: str = Field(
        "flywheel.item-deltas", description="item-factor deltas shared by all job subtasks"
    )
    consumer_group: str = Field("flywheel-job", description="Kafka consumer group of the job")
    start_from: Literal["earliest", "latest", "committed"] = Field(
        "earliest", description="where a fresh job (no checkpoint) starts reading events"
    )

    # --- Redis ---------------------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for top-N lists")
    redis_prefix: str = Field("fw", description="prefix of every Redis key Flywheel writes")
    list_ttl_s: int = Field(7 * 86400, ge=0, description="TTL of list keys, 0 = none")

    # --- privacy -------------------------------------------------------------------------
    hmac_key: str = Field(DEV_HMAC_KEY, min_length=8, description="HMAC key for user ids")

    # --- event validation ----------------------------------------------------------------
    max_event_bytes: int = Field(16384, ge=256, description="larger payloads are dead-lettered")
    min_event_ts_ms: int = Field(946684800000, description="older ts are absurd (2000-01-01)")
    max_future_skew_ms: int = Field(86_400_000, ge=0, description="allowed ts ahead of now")
    dedupe_window: int = Field(256, ge=0, description="recent event ids kept per user")

    # --- model ---------------------------------------------------------------------------
    n_factors: int = Field(32, ge=1, le=1024, description="latent factors per user/item")
    learning_rate: float = Field(0.05, gt=0, le=10, description="SGD learning rate")
    l2: float = Field(0.002, ge=0, description="L2 regularisation")
    n_negatives: int = Field(4, ge=0, le=100, description="sampled negatives per positive")
    init_std: float = Field(0.1, gt=0, description="std of the initial factors")
    seed: int = Field(42, description="seed of initialisation and negative sampling")
    weight_view: float = Field(0.5, ge=0, description="positive weight of a view")
    weight_click: float = Field(1.0, ge=0, description="positive weight of a click")
    weight_add_to_cart: float = Field(2.0, ge=0, description="positive weight of a cart add")
    weight_purchase: float = Field(4.0, ge=0, description="positive weight of a purchase")
    max_items: int = Field(2_000_000, ge=1, description="item-table capacity")

    # --- features ------------------------------------------------------------------------
    windows_s: tuple[int, ...] = Field((3600, 86400), description="sliding windows, seconds")
    out_of_orderness_ms: int = Field(60_000, ge=0, description="bounded out-of-orderness")
    recent_items_max: int = Field(50, ge=1, description="recent item sequence length")
    purchased_max: int = Field(500, ge=0, description="purchased items kept per user")
    categories_max: int = Field(50, ge=1, description="categories counted per user")
    state_ttl_s: int = Field(30 * 86400, ge=60, description="idle users' state expires")
    cart_items_max: int = Field(
        20, ge=1, le=1000, description="items added to the cart (not bought since) kept per user"
    )

    # --- top-N ---------------------------------------------------------------------------
    top_n: int = Field(50, ge=1, le=1000, description="list length written to Redis")
    exclude_purchased: bool = Field(True, description="False for rebuy catalogues (groceries)")
    coalesce_ms: int = Field(250, ge=10, description="min interval between refreshes of a user")
    cold_user_events: int = Field(3, ge=0, description="users with fewer events get trending")
    trending_window_s: int = Field(86400, ge=60, description="window of trending popularity")
    category_trending_s: int = Field(
        10, ge=0, description="seconds between per-category trending writes, 0 = off"
    )
    item_sync_flush_ms: int = Field(50, ge=1, description="max delay of item-delta batches")
    topn_index: Literal["auto", "exact", "clustered"] = Field(
        "auto", description="top-N retrieval: exact, clustered (approximate), auto by size"
    )
    ann_min_items: int = Field(200_000, ge=1, description="auto: clustered from this many items")
    ann_probe: int = Field(8, ge=1, description="clusters scored per list (clustered index)")
    ann_refresh_s: float = Field(30.0, gt=0, description="clustered index reassignment period")
    blas_threads: int = Field(
        1, ge=1, le=64, description="BLAS and exact top-N threads per job process"
    )

    # --- repeat ("buy it again") term of the personal score ------------------------------
    repeat_weight: float = Field(
        8.0, ge=0, le=100, description="weight of log(1 + count) of the user's own items, 0 = off"
    )
    repeat_offset: float = Field(
        -10.0,
        ge=-100,
        le=100,
        description="added to the score of each item the user has a count of",
    )
    repeat_discovery_slots: int = Field(
        0, ge=0, le=1000, description="places of a list kept for items new to the user"
    )
    repeat_half_life_s: float = Field(
        7_776_000.0, ge=0, description="half-life of the counts in event time, 0 = no decay"
    )
    repeat_rebuy_weight: float = Field(
        1.0,
        ge=0,
        le=100,
        description="weight of the item's rebuy rate over all users (a centred logit) added to "
        "the score of each item the user has a count of, 0 = off",
    )
    repeat_items_max: int = Field(
        200, ge=0, le=10_000, description="items counted per user (least recent dropped)"
    )

    # --- item-to-item lists (product and cart scenes) ------------------------------------
    neighbour_context: int = Field(
        5, ge=0, le=50, description="distinct recent items paired with each event, 0 = off"
    )
    neighbour_gap_s: int = Field(
        1800, ge=1, description="items touched at most this long apart count as neighbours"
    )
    neighbour_max: int = Field(
        100, ge=1, le=10_000, description="neighbours kept per item (twice that between prunings)"
    )
    neighbour_half_life_s: int = Field(
        7 * 86400, ge=60, description="half-life of neighbour weights, in event time"
    )
    neighbour_flush_ms: int = Field(
        1000, ge=10, description="min interval between rewrites of an item's list"
    )
    neighbour_state_ttl_s: int = Field(
        30 * 86400, ge=60, description="idle items' neighbour state expires"
    )

    # --- live quality (prequential, inside the job) ---------------------------------------
    quality_k: int = Field(
        10, ge=0, le=1000, description="K of the live HR@K / NDCG@K (cut at top_n), 0 = off"
    )
    state_cache_users: int = Field(
        20_000, ge=0, description="users whose decoded state each subtask keeps between events"
    )
    quality_users_max: int = Field(
        100_000, ge=0, description="users whose last top-K list is kept in memory per subtask"
    )
    quality_coverage_window_s: int = Field(
        3600, ge=60, description="trailing window of the live catalogue-coverage gauge"
    )

    # --- Flink ---------------------------------------------------------------------------
    parallelism: int = Field(1, ge=1, le=256, description="Flink parallelism of the job")
    execution_mode: Literal["thread", "process"] = Field(
        "thread", description="PyFlink Python execution mode"
    )
    checkpoint_interval_ms: int = Field(10_000, ge=0, description="0 disables checkpoints")
    checkpoint_dir: Path = Field(Path("var/checkpoints"), description="checkpoint storage")
    restore_from: str = Field("", description="checkpoint/savepoint path to restore, or ''")
    flink_metrics_port: int = Field(9249, ge=0, le=65535, description="Flink Prometheus port")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Flywheel metrics port")
    metrics_port_span: int = Field(
        1,
        ge=1,
        le=256,
        description="ports from metrics_port on where a job process serves its metrics (the "
        "first free one): one per TaskManager sharing a host; 1 = metrics_port only",
    )
    metrics_bind: str = Field("127.0.0.1", description="address the metrics endpoints bind")
    job_metrics_url: str = Field(
        "", description="job metrics URL the API's /healthz checks; empty = this host's port"
    )
    profile_dir: str = Field(
        "",
        description="directory where each Python operator of the job writes a cProfile of its "
        "thread (flink_jobs.profiling; slows the job down); empty = off",
    )

    # --- recommendation API --------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="address the recommendation API binds")
    api_port: int = Field(8000, ge=1, le=65535, description="port of the recommendation API")
    api_workers: int = Field(
        2, ge=1, le=32, description="API worker processes (uvicorn workers on the same port)"
    )
    diversity_lambda: float = Field(
        0.0, ge=0, le=1, description="default diversity of served lists, 0 = relevance order"
    )

    # --- experiments ---------------------------------------------------------------------
    experiment: str = Field(
        "off",
        description="experiment between strategies: off, NAME:ab|bandit:ARM=W,ARM=W[:SCENES], "
        "or JSON (online_models.experiments.parse_experiment)",
    )
    attribution_window_s: int = Field(
        86400, ge=1, description="actions credited to an impression at most this much later"
    )
    attribution_impressions_max: int = Field(
        100, ge=1, le=10_000, description="impressions kept per user for attribution"
    )
    attribution_grace_ms: int = Field(
        10_000,
        ge=0,
        le=3_600_000,
        description="an action that reaches the job before its impression is still credited "
        "to it when it happened at most this long after it; 0 = off",
    )

    # --- embedded stack ------------------------------------------------------------------
    prometheus_port: int = Field(9090, ge=1, le=65535, description="local Prometheus port")
    var_dir: Path = Field(Path("var"), description="logs and data of the local stack")

    @field_validator("windows_s")
    @classmethod
    def _windows_sorted(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(w <= 0 for w in value) or list(value) != sorted(set(value)):
            raise ValueError("windows must be positive, distinct and ascending, e.g. 3600,86400")
        return value

    @field_validator("experiment")
    @classmethod
    def _experiment_valid(cls, value: str) -> str:
        if value.strip().lower() not in ("", "off"):
            from online_models.experiments import parse_experiment

            parse_experiment(value, STRATEGIES)
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_shape(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value

    @field_validator("profile_dir")
    @classmethod
    def _profile_dir_is_a_directory(cls, value: str) -> str:
        if value and Path(value).exists() and not Path(value).is_dir():
            raise ValueError(f"expected a directory (created if missing), got the file {value!r}")
        return value

    @field_validator("metrics_port_span")
    @classmethod
    def _metrics_ports_exist(cls, value: int, info: ValidationInfo) -> int:
        first = info.data.get("metrics_port")
        if isinstance(first, int) and first and first + value - 1 > 65535:
            raise ValueError(f"metrics_port {first} + span {value} runs past port 65535")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected redis://host:port/db, got {value!r}")
        return value

    @model_validator(mode="after")
    def _topics_distinct(self) -> Settings:
        topics = {self.events_topic, self.dlq_topic, self.item_sync_topic}
        if len(topics) != 3:
            raise ValueError("events_topic, dlq_topic and item_sync_topic must differ")
        return self

    @property
    def action_weights(self) -> dict[str, float]:
        """Weight of each learnable action as a positive (impressions are not learned)."""
        return {
            "view": self.weight_view,
            "click": self.weight_click,
            "add_to_cart": self.weight_add_to_cart,
            "purchase": self.weight_purchase,
        }

    @property
    def experiment_spec(self) -> Experiment | None:
        """The parsed experiment (validated at start-up), ``None`` when it is ``off``."""
        if self.experiment.strip().lower() in ("", "off"):
            return None
        from online_models.experiments import parse_experiment

        return parse_experiment(self.experiment, STRATEGIES)

    def with_overrides(self, **values: object) -> Settings:
        """A validated copy with some values replaced (used by CLIs and tests)."""
        merged = self.model_dump()
        merged.update(values)
        return _validated(merged)


def _validated(values: dict[str, object]) -> Settings:
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        env = f"{ENV_PREFIX}{name.upper()}" if err["loc"] else "settings"
        lines.append(f"invalid setting {env}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings from the environment; ``overrides`` win over it.

    >>> load_settings(n_factors=8).n_factors
    8
    >>> load_settings(n_factors=0)
    Traceback (most recent call last):
    ...
    flywheel.settings.SettingsError: invalid setting FLYWHEEL_N_FACTORS: ...
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
