"""What the stages share: the event contract, the settings read from `.env`, /metrics and /healthz,
and who a client is (client_address: the collector's and Superset's rate limits)."""
