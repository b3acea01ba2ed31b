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
    exec gunicorn --config "$(dirname "$0")/gunicorn.conf.py" "$@" "api.main:create_app()"
    ;;
  store)
    exec python -m storeserver "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
