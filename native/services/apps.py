"""The project's own programs: the stream consumer (N members of one group) and the producer."""

from __future__ import annotations

from native.context import Context
from native.services.base import Program, Service


class StreamConsumerService(Service):
    name = "stream_consumer"
    depends_on = ("postgres", "kafka")
    start_timeout = 20

    def program(self, ctx: Context) -> Program:
        return Program(
            argv=[str(ctx.python), "-m", "stream_consumer"],
            env=ctx.env,
            directory=str(ctx.root),
            numprocs=int(ctx.env.get("CONSUMER_REPLICAS", "1")),
        )


class KafkaProducerService(Service):
    name = "kafka_producer"
    depends_on = ("kafka",)
    start_timeout = 20

    def program(self, ctx: Context) -> Program:
        return Program(
            argv=[
                str(ctx.python),
                "-m",
                "kafka_producer",
                "--rate",
                ctx["PRODUCER_RATE"],
                "--users",
                ctx["PRODUCER_USERS"],
            ],
            env=ctx.env,
            directory=str(ctx.root),
        )
