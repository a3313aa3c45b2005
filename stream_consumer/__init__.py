"""The stream consumer: Kafka → validated, aggregated micro-batches → Postgres, exactly once."""
