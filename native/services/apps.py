"""The project's own programs: the stream consumer (N members of one group), the producer and the
HTTP collector. Each runs its compose service's command with its environment (the env_file .env,
which is the stack's settings, and what compose sets on top), translated by native/compose.py;
their ports are common/settings.py's, from .env."""

from __future__ import annotations

from typing import Any

from common.settings import Settings
from native.context import Context
from native.services.base import Program, Service


def _healthz(host: str, port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def settings(ctx: Context) -> Settings:
    """The settings the apps read (common/settings.py), from this stack's env and not the process's."""
    values: dict[str, Any] = {k.lower(): v for k, v in ctx.env.items() if k.isupper()}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def compose_program(ctx: Context, service: str, overrides: dict[str, str | None] | None = None, **kwargs) -> Program:
    """The compose service's command (its `python` the app virtualenv's) and environment."""
    declared = ctx.compose(service)
    python, *args = declared.command()
    assert python == "python", f"{service}: compose runs {python}, not the app's python"
    env = declared.environment(overrides)
    return Program(
        argv=[str(ctx.python), *args], env=env, directory=str(ctx.root), settings=declared.settings, **kwargs
    )


class StreamConsumerService(Service):
    """CONSUMER_REPLICAS members of the consumer group (one supervisord program each, metrics on
    CONSUMER_METRICS_PORT and the ports after it); healthy when every member's /healthz answers."""

    name = "stream_consumer"
    depends_on = ("postgres", "kafka")
    start_timeout = 20

    def healthy(self, ctx: Context) -> bool:
        """Every member answers /healthz with 200: not stalled, no partition refused."""
        s = settings(ctx)
        base = s.consumer_metrics_port
        return all(_healthz("127.0.0.1", port) for port in range(base, base + s.consumer_replicas))

    def port(self, ctx: Context) -> str:
        return f"http://127.0.0.1:{settings(ctx).consumer_metrics_port}/metrics"

    def program(self, ctx: Context) -> Program:
        return compose_program(ctx, "stream_consumer", numprocs=settings(ctx).consumer_replicas)


class KafkaProducerService(Service):
    """The synthetic producer at PRODUCER_RATE for PRODUCER_USERS users, until stopped; not for
    real traffic (that is the collector's)."""

    name = "kafka_producer"
    depends_on = ("kafka",)
    start_timeout = 20

    def healthy(self, ctx: Context) -> bool:
        return _healthz("127.0.0.1", settings(ctx).producer_metrics_port)

    def port(self, ctx: Context) -> str:
        return f"http://127.0.0.1:{settings(ctx).producer_metrics_port}/metrics"

    def program(self, ctx: Context) -> Program:
        # PRODUCER_RATE and PRODUCER_USERS (in its environment) are its defaults for --rate and --users
        return compose_program(ctx, "kafka_producer")


class CollectorService(Service):
    """The HTTP collector on COLLECTOR_PORT (events, the demo shop, /healthz, /metrics)."""

    name = "collector"
    depends_on = ("kafka",)
    start_timeout = 20

    def healthy(self, ctx: Context) -> bool:
        return _healthz("127.0.0.1", settings(ctx).collector_metrics_port)

    def port(self, ctx: Context) -> str:
        return f"http://127.0.0.1:{settings(ctx).collector_port}/v1/events"

    def program(self, ctx: Context) -> Program:
        # compose's collector sits behind cloudflared-shop (one trusted hop); natively no proxy is
        # in front unless .env says so
        return compose_program(ctx, "collector", {"COLLECTOR_TRUST_FORWARDED_FOR": None})
