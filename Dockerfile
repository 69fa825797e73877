# One image for every Procfile process:
#   docker run IMAGE release | web | scheduler   (or any command: IMAGE connect-access check)
# The bot is installed from its wheel (no source tree in the image), with every dependency
# pinned by constraints.txt.

FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir "setuptools>=77" \
 && pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=3000 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    PROCFILE=/app/Procfile \
    ALEMBIC_CONFIG=/opt/venv/lib/python3.11/site-packages/bot/_data/alembic.ini
COPY constraints.txt /tmp/constraints.txt
COPY --from=build /dist/ /tmp/dist/
# ALEMBIC_CONFIG is where the wheel put alembic.ini, so the Procfile's `release:`
# (`alembic upgrade head`) finds the packaged migrations from any working directory.
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir --constraint /tmp/constraints.txt /tmp/dist/*.whl \
 && rm -rf /tmp/dist /tmp/constraints.txt \
 && test -f "$ALEMBIC_CONFIG" \
 && useradd --system --uid 10001 --no-create-home app
WORKDIR /app
COPY Procfile /app/Procfile
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER app
EXPOSE 3000
# web: GET /healthz answers; scheduler: this container's scheduler heartbeat is fresh
# (`connect-access status --host`); see deploy/docker-entrypoint.sh.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["docker-entrypoint.sh", "healthcheck"]
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["web"]
