# One image, two roles: the store (`store`) or the API (`api`, the default); see deploy/entrypoint.sh.

# --- dependencies: their own layer, rebuilt only when pyproject.toml or constraints.txt change
FROM python:3.11-slim AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml constraints.txt ./
# Runtime dependencies only (no test tools), at the versions pinned in constraints.txt.
RUN python3 -m venv /opt/venv \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt -r requirements.txt

# --- runtime: slim, non-root, code on top of the venv
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8000 \
    STORE_SOCKET=/run/memdb/store.sock \
    STORE_DATA_DIR=/var/lib/memdb \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
RUN groupadd --system --gid 10001 memdb \
 && useradd --system --uid 10001 --gid memdb --home-dir /app --shell /usr/sbin/nologin memdb \
 && mkdir -p /run/memdb /var/lib/memdb /app \
 && chown memdb:memdb /run/memdb /var/lib/memdb \
 && chmod 0700 /var/lib/memdb
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# The code stays root's, read-only to the service user: a compromised process cannot rewrite
# what runs after its next restart (QA). It writes only /run/memdb, /var/lib/memdb and /tmp.
COPY storeserver ./storeserver
COPY api ./api
COPY deploy ./deploy
# Readable whatever the umask of the checkout the image is built from (it was the owner's).
RUN chmod -R a+rX,go-w /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=10s --start-period=60s --retries=5 \
  CMD ["python", "/app/deploy/httpcheck.py", "http://127.0.0.1:8000/api/v1/health"]
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["api"]
