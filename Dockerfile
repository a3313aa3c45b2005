# The app image: kafka_producer and stream_consumer (docker compose builds it once for both).
FROM python:3.11.14-slim-bookworm
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY common/ common/
COPY kafka_producer/ kafka_producer/
COPY stream_consumer/ stream_consumer/
# the pipeline exporter and Alertmanager's config renderer (compose's pipeline-exporter, alertmanager-init)
COPY monitoring/ monitoring/
RUN useradd --system --uid 10001 app
USER app
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "stream_consumer"]
