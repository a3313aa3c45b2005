"""One typed settings object for every Python stage, read from the environment with `.env` defaults.

Variables already set in the environment win over `.env`, the way docker compose treats them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

from dotenv import dotenv_values
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.contract import DEFAULT_MAX_FUTURE_SKEW

# The checkout's root: every path the code builds starts here.
REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = REPO_ROOT / ".env"


def env_file_values(path: Path = ENV_FILE) -> dict[str, str]:
    """The settings a `.env` file states, parsed as pydantic (Settings) and docker compose parse it
    (python-dotenv: quotes, comments, `export`); a bare name without `=` states nothing."""
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=ENV_FILE, env_file_encoding="utf-8", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic: str = "user_events"
    kafka_profiles_topic: str = "user_profiles"
    kafka_partitions: Annotated[int, Field(ge=1, le=1000)] = 6
    kafka_consumer_group: str = "stream_consumer"

    postgres_host: str = "127.0.0.1"
    postgres_port: Port = 5432
    postgres_db: str = "data_platform_demo"
    postgres_user: str = "demo_user"
    postgres_password: str = ""
    consumer_db_user: str = "stream_consumer"
    consumer_db_password: str = ""

    producer_rate: Annotated[float, Field(ge=0)] = 20
    producer_users: Annotated[int, Field(ge=1, le=10_000_000)] = 100

    consumer_batch_max_events: Annotated[int, Field(ge=1, le=1_000_000)] = 50_000
    consumer_batch_max_ms: Annotated[int, Field(ge=1, le=60_000)] = 200
    consumer_max_event_bytes: Annotated[int, Field(ge=256, le=100_000_000)] = 65_536
    # Seconds an event's occurred_at (a profile's updated_at) may lie past the message's arrival in
    # Kafka, for producers whose clocks run ahead. At most a day, so that the contract stays tight.
    consumer_max_future_skew: Annotated[int, Field(ge=0, le=86_400)] = int(DEFAULT_MAX_FUTURE_SKEW.total_seconds())
    # A user's event_id is counted once within this many seconds (clients retry; the collector's 503
    # asks them to); 0 turns deduplication off. Postgres keeps rate x window to twice that many ids
    # (streaming.event_ids, two generations).
    consumer_dedup_window_seconds: Annotated[int, Field(ge=0, le=7 * 86_400)] = 900
    consumer_replicas: Annotated[int, Field(ge=1, le=100)] = 1
    # Member k of CONSUMER_REPLICAS serves /metrics and /healthz on the k-th port from this one.
    consumer_metrics_port: Port = 9111
    producer_metrics_port: Port = 9110
    # Where the producer and the consumer serve metrics: loopback natively; compose sets 0.0.0.0.
    metrics_host: str = "127.0.0.1"
    # Dead letters older than this are deleted by the consumer (0 keeps them forever).
    dead_letter_retention_days: Annotated[int, Field(ge=0, le=36_500)] = 30
    consumer_session_timeout_ms: Annotated[int, Field(ge=1000)] = 10_000
    # A member that does not poll for this long (e.g. stuck in a database call) leaves the group.
    consumer_max_poll_interval_ms: Annotated[int, Field(ge=1000)] = 300_000

    # The HTTP collector (collector/): where it listens (compose sets 0.0.0.0) and its limits.
    collector_host: str = "127.0.0.1"
    collector_port: Port = 8090
    # /metrics and /healthz on a port of their own (on METRICS_HOST): the public port (the shop's
    # tunnel) serves the events and the shop only.
    collector_metrics_port: Port = 8091
    collector_max_body_bytes: Annotated[int, Field(ge=1024, le=100_000_000)] = 1_000_000
    collector_max_events: Annotated[int, Field(ge=1, le=100_000)] = 500
    # Per client (address): events per second on average, and the burst it may send at once.
    collector_client_events_per_second: Annotated[float, Field(gt=0, le=1_000_000)] = 100
    collector_client_burst: Annotated[int, Field(ge=1, le=1_000_000)] = 1_000
    # Clients whose buckets are remembered at once (the least recently seen are forgotten).
    collector_max_clients: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    # Behind one proxy (the tunnel), the client is the last X-Forwarded-For address (its lines joined),
    # not the peer: common/client_address.py.
    collector_trust_forwarded_for: bool = False
    # Origins allowed to POST events from a browser, comma-separated; "*" for any site. Enforced: a
    # request from another Origin gets 403 (a request without Origin, from no browser, is let through).
    collector_cors_origins: str = "*"
    # Event types accepted, comma-separated (the tracker's own); any other is refused per event. Each
    # one a type the contract allows (common/contract.py's pattern), at least one.
    collector_event_types: Annotated[str, Field(pattern=r"^ *[a-z][a-z0-9_]* *(, *[a-z][a-z0-9_]* *)*$")] = (
        "view,click,purchase,identify"
    )
    # How long a request waits for Kafka's acknowledgement before answering 503.
    collector_ack_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10

    def consumer_dsn(self) -> str:
        """libpq connection string for the consumer's own least-privilege role."""
        return _dsn(self, self.consumer_db_user, self.consumer_db_password, "stream_consumer")

    def owner_dsn(self) -> str:
        """libpq connection string for the database owner (setup and tests only)."""
        return _dsn(self, self.postgres_user, self.postgres_password, "owner")


def _dsn(s: Settings, user: str, password: str, app: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(
        host=s.postgres_host,
        port=s.postgres_port,
        dbname=s.postgres_db,
        user=user,
        password=password,
        application_name=app,
        connect_timeout=5,
    )


def load_settings(**overrides: Any) -> Settings:  # Any: pydantic validates them
    """Settings or a one-line error per bad variable on stderr and exit status 2 (never a traceback)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]).upper()
            print(f"error: invalid setting {name}={err.get('input')!r}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
