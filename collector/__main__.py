"""`python -m collector`: the HTTP collector on COLLECTOR_HOST:COLLECTOR_PORT.

    python -m collector [--server uvicorn|granian]

uvicorn (uvloop, httptools) by default: on this project's 2-core machine it accepted 82,000 events/s
against Granian's 50,000, p99 8 ms against 21 ms (benchmarks/collector.py measures both in one
run; docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

from common.settings import load_settings

SERVERS = ("uvicorn", "granian")


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
            # X-Forwarded-For is the app's to judge (COLLECTOR_TRUST_FORWARDED_FOR): uvicorn would
            # otherwise take it from any client on 127.0.0.1, and a spoofed address escapes the rate limit.
            proxy_headers=False,
            server_header=False,
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
