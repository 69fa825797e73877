#!/bin/sh
# The image's entry point. `docker run IMAGE release|web|scheduler` runs that Procfile
# process with exactly the Procfile's command line (read from $PROCFILE, so the two cannot
# drift apart); `healthcheck` is the image's HEALTHCHECK (GET /healthz on the web process,
# a fresh heartbeat of this host's scheduler); anything else runs as given
# (`docker run IMAGE connect-access check`).
set -e
PROCFILE="${PROCFILE:-/app/Procfile}"

procfile_command() {
  awk -v name="$1" 'index($0, name ":") == 1 { sub(/^[^:]*:[ \t]*/, ""); print; exit }' \
    "$PROCFILE"
}

if [ "$1" = "healthcheck" ]; then
  # PID 1 is the process this container runs (every branch below execs into it).
  case "$(tr '\0' ' ' < "${HEALTHCHECK_CMDLINE:-/proc/1/cmdline}")" in
    *gunicorn*) exec python -c 'import os, sys, urllib.request
port = os.environ.get("PORT", "3000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError as exc:
    sys.exit(f"GET /healthz on port {port}: {exc}")' ;;
    *"connect-access scheduler"*) exec connect-access status --host "$(hostname)" --quiet ;;
    *) exit 0 ;;  # release and one-off commands: nothing long-running to probe
  esac
fi

if [ "$#" -eq 1 ]; then
  command=$(procfile_command "$1")
  if [ -n "$command" ]; then
    exec sh -c "exec $command"
  fi
fi
exec "$@"
