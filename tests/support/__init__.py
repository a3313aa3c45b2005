"""What the test tiers and the benchmarks share (no benchmark imports a tier): events built on the
contract (events.py), Hypothesis strategies for its edges (strategies.py), a throwaway native stack
on free ports (ephemeral.py), the end-to-end checks' known events (known_events.py), waits for the
pipeline's stages (pipeline_waits.py), a Superset API client (superset_api.py) and headless
Chromium (browser.py)."""
