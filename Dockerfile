# The app image: kafka_producer, stream_consumer and collector (docker compose builds it once for all).
FROM python:3.11.14-slim-bookworm
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY common/ common/
COPY kafka_producer/ kafka_producer/
COPY stream_consumer/ stream_consumer/
COPY collector/ collector/
# the pipeline exporter and Alertmanager's config renderer (compose's pipeline-exporter, alertmanager-init)
COPY monitoring/ monitoring/
RUN useradd --system --uid 10001 app
USER app
ENV PYTHONUNBUFFERED=1
CMD ["python", "-m", "stream_consumer"]
