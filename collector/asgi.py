"""The application object ASGI servers import: `collector.asgi:app`."""

from __future__ import annotations

import logging

from collector.app import Collector
from common.settings import load_settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = Collector(load_settings())
