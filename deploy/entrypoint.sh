#!/bin/sh
# Container entrypoint: `store` runs the store process, `api` (default) runs gunicorn.
# Runs before Python starts, so it prepares what must exist first.
set -eu
role="${1:-api}"
[ $# -gt 0 ] && shift
case "$role" in
  api)
    # prometheus-client's multiprocess mode reads this directory at import time; stale files
    # from a previous run would add dead workers' counts, so it is wiped at every start.
    # Empty it rather than remove it: it may be a mounted volume (tmpfs), which rm -rf cannot
    # remove, and only what is inside is ours to delete.
    dir="${PROMETHEUS_MULTIPROC_DIR:-/tmp/prometheus}"
    mkdir -p "$dir"
    find "$dir" -mindepth 1 -delete
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
