"""`python -m collector`: the HTTP collector on COLLECTOR_HOST:COLLECTOR_PORT.

    python -m collector [--server granian|uvicorn]

Granian by default (benchmarks/collector.py measures both on the same machine; docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

from common.settings import load_settings

SERVERS = ("granian", "uvicorn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=SERVERS, default=SERVERS[0])
    args = parser.parse_args()
    settings = load_settings()
    if args.server == "uvicorn":
        import uvicorn

        uvicorn.run(
            "collector.asgi:app",
            host=settings.collector_host,
            port=settings.collector_port,
            lifespan="on",
            access_log=False,
            log_level="warning",
        )
    else:
        from granian import Granian
        from granian.constants import Interfaces

        Granian(
            "collector.asgi:app",
            address=settings.collector_host,
            port=settings.collector_port,
            interface=Interfaces.ASGI,
            workers=1,
            log_access=False,
        ).serve()


if __name__ == "__main__":
    main()
