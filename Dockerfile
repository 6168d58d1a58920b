# syntax=docker/dockerfile:1
# Relay in a container: `docker compose up` (compose.yaml) runs it with PostgreSQL,
# Prometheus and Grafana. Configuration is by RELAY_* environment (README, "Run it for
# real"); a file can be mounted and named with RELAY_CONFIG.

# -- build: a virtual environment with Relay and its dependencies ---------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml ./
COPY relay ./relay
RUN python -m venv /opt/relay \
    && /opt/relay/bin/pip install . \
    && /opt/relay/bin/pip check

# -- runtime: the venv alone, run by an unprivileged user -----------------------------------
FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system relay \
    && useradd --system --gid relay --home-dir /var/lib/relay --no-create-home relay \
    && install -d -o relay -g relay -m 0700 /var/lib/relay
COPY --from=build /opt/relay /opt/relay
ENV PATH=/opt/relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RELAY_SERVER_VAR_DIR=/var/lib/relay \
    RELAY_DATABASE_URL=sqlite:////var/lib/relay/relay.db \
    RELAY_LISTENERS_SMTP=0.0.0.0:25 \
    RELAY_LISTENERS_SUBMISSIONS=0.0.0.0:465 \
    RELAY_LISTENERS_SUBMISSION=0.0.0.0:587 \
    RELAY_LISTENERS_ALT=0.0.0.0:2525 \
    RELAY_ADMIN_LISTEN=0.0.0.0:8025 \
    RELAY_SERVER_LOG_FORMAT=json
# The spool's database (SQLite), the self-signed certificate, the secret key, the outbox.
VOLUME ["/var/lib/relay"]
WORKDIR /var/lib/relay
# SMTP (STARTTLS), submissions (implicit TLS), submission, alternative submission, admin.
EXPOSE 25 465 587 2525 8025
USER relay
# Docker lets an unprivileged user bind ports below 1024 inside the container
# (net.ipv4.ip_unprivileged_port_start=0); compose.yaml says so explicitly.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('RELAY_ADMIN_LISTEN', ':8025').rpartition(':')[2]; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["relay", "serve"]
