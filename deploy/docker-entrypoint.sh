#!/bin/sh
# The image's entry point. `docker run IMAGE release|web|scheduler` runs that Procfile
# process with exactly the Procfile's command line (read from $PROCFILE, so the two cannot
# drift apart); anything else runs as given
# (`docker run IMAGE connect-access check`).
set -e
PROCFILE="${PROCFILE:-/app/Procfile}"

procfile_command() {
  awk -v name="$1" 'index($0, name ":") == 1 { sub(/^[^:]*:[ \t]*/, ""); print; exit }' \
    "$PROCFILE"
}

if [ "$#" -eq 1 ]; then
  command=$(procfile_command "$1")
  if [ -n "$command" ]; then
    exec sh -c "exec $command"
  fi
fi
exec "$@"
