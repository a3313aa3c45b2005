"""The project's own programs: the stream consumer (N members of one group), the producer and the
HTTP collector."""

from __future__ import annotations

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


class StreamConsumerService(Service):
    """CONSUMER_REPLICAS members of the consumer group (one supervisord program each, metrics on
    CONSUMER_METRICS_PORT and the ports after it); healthy when every member's /healthz answers."""

    name = "stream_consumer"
    depends_on = ("postgres", "kafka")
    start_timeout = 20

    def healthy(self, ctx: Context) -> bool:
        """Every member answers /healthz with 200: not stalled, no partition refused."""
        base = int(ctx.env.get("CONSUMER_METRICS_PORT", "9111"))
        members = int(ctx.env.get("CONSUMER_REPLICAS", "1"))
        return all(_healthz("127.0.0.1", port) for port in range(base, base + members))

    def port(self, ctx: Context) -> str:
        base = int(ctx.env.get("CONSUMER_METRICS_PORT", "9111"))
        return f"http://127.0.0.1:{base}/metrics"

    def program(self, ctx: Context) -> Program:
        return Program(
            argv=[str(ctx.python), "-m", "stream_consumer"],
            env=ctx.env,
            directory=str(ctx.root),
            numprocs=int(ctx.env.get("CONSUMER_REPLICAS", "1")),
        )


class KafkaProducerService(Service):
    """The synthetic producer at PRODUCER_RATE for PRODUCER_USERS users, until stopped; not for
    real traffic (that is the collector's)."""

    name = "kafka_producer"
    depends_on = ("kafka",)
    start_timeout = 20

    def healthy(self, ctx: Context) -> bool:
        return _healthz("127.0.0.1", int(ctx.env.get("PRODUCER_METRICS_PORT", "9110")))

    def port(self, ctx: Context) -> str:
        return f"http://127.0.0.1:{ctx.env.get('PRODUCER_METRICS_PORT', '9110')}/metrics"

    def program(self, ctx: Context) -> Program:
        return Program(
            # PRODUCER_RATE and PRODUCER_USERS (in ctx.env) are its defaults for --rate and --users
            argv=[str(ctx.python), "-m", "kafka_producer"],
            env=ctx.env,
            directory=str(ctx.root),
        )


class CollectorService(Service):
    """The HTTP collector on COLLECTOR_PORT (events, the demo shop) and COLLECTOR_METRICS_PORT
    (/healthz, /metrics)."""

    name = "collector"
    depends_on = ("kafka",)
    start_timeout = 20

    def healthy(self, ctx: Context) -> bool:
        return _healthz("127.0.0.1", int(ctx["COLLECTOR_METRICS_PORT"]))

    def port(self, ctx: Context) -> str:
        return f"http://127.0.0.1:{ctx['COLLECTOR_PORT']}/v1/events"

    def program(self, ctx: Context) -> Program:
        return Program(argv=[str(ctx.python), "-m", "collector"], env=ctx.env, directory=str(ctx.root))
