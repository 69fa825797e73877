# One image for every Procfile process:
#   docker run IMAGE release | web | scheduler   (or any connect-access command)
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=3000
WORKDIR /app
COPY pyproject.toml README.md alembic.ini Procfile ./
COPY bot ./bot
COPY catalog ./catalog
COPY migrations ./migrations
RUN pip install --no-cache-dir -e . && useradd --system --uid 10001 app
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER app
EXPOSE 3000
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["web"]
