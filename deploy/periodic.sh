#!/bin/sh
# Run a command every INTERVAL seconds (the `prune` service): periodic.sh 600 python manage.py prune
# A failed run is reported and retried at the next interval; SIGTERM stops the loop.
# PERIODIC_ONCE=1 runs the command once and exits with its status (the test suite uses it).
set -u
interval="$1"
shift
trap 'exit 0' TERM INT
while :; do
  status=0
  "$@" || status=$?
  if [ "${PERIODIC_ONCE:-0}" = "1" ]; then
    exit "$status"
  fi
  [ "$status" -eq 0 ] || echo "periodic: '$*' failed with status $status; retrying in ${interval}s" >&2
  sleep "$interval" &
  wait $!
done
