#!/bin/sh
# Container entrypoint: `store` runs the store process, `api` (default) runs gunicorn.
# Runs before Python starts, so it prepares what must exist first.
set -eu
role="${1:-api}"
[ $# -gt 0 ] && shift
case "$role" in
  api)
    # prometheus-client's multiprocess mode reads this directory at import time; stale files
    # from a previous run would add dead workers' counts, so they are removed at every start:
    # prometheus-client's own files only (<kind>_<pid>.db), never anything else in there. The
    # variable may name a shared or mistyped directory: emptying it (find -delete) deleted
    # everything else there (pointed at /etc, all of /etc).
    # A directory that cannot be made or written is left to gunicorn.conf.py, which refuses it
    # as an invalid setting in one JSON line (exit 2) rather than plain text and exit 1 here.
    dir="${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus}"
    if mkdir -p "$dir" 2>/dev/null && [ -w "$dir" ]; then
      find "$dir" -mindepth 1 -maxdepth 1 -type f \( -name 'counter_*.db' -o -name 'gauge_*.db' \
        -o -name 'histogram_*.db' -o -name 'summary_*.db' \) -delete
    fi
    export PROMETHEUS_MULTIPROC_DIR="$dir"
    # gunicorn with gunicorn.conf.py, after a settings check gunicorn itself would skip
    # (start_gunicorn.py: a bad WEB_CONCURRENCY is one invalid_settings line too).
    exec python "$(dirname "$0")/start_gunicorn.py" "$@" "api.main:create_app()"
    ;;
  store)
    exec python -m storeserver "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
