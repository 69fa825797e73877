#!/bin/sh
# Runs a Procfile process by name (release, web, scheduler), or any other command as given.
set -e
case "$1" in
  release) exec alembic upgrade head ;;
  web) exec gunicorn --bind "0.0.0.0:${PORT:-3000}" --workers "${WEB_CONCURRENCY:-2}" \
         --threads 4 --timeout 30 'bot.slack.wsgi:create_app()' ;;
  scheduler) exec connect-access scheduler ;;
  *) exec "$@" ;;
esac
