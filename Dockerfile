# driver-stats: the Bytewax dataflow as a container image.
#
#   docker build -t driver-stats:local .
#   docker run --rm -e DRIVER_STATS_MQTT_URL=mqtt://broker:1883 driver-stats:local
#
# The default command is the documented one (one process, one worker, no
# recovery); docker-compose.yml adds the recovery flags and k8s/ runs
# deploy/k8s-entrypoint.sh, which adds the process id and peer addresses.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with the project and its pinned dependencies -------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what .dockerignore lets through: pyproject.toml, the packages, deploy/.
COPY . .
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/python -c "import bytewax, driver_stats, flows"

# --- runtime ------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# tini is PID 1 so SIGTERM reaches the Python process (docker stop, pod
# deletion) instead of being ignored until the kill timeout.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 driverstats \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin driverstats \
    && mkdir /recovery /app \
    && chown driverstats:driverstats /recovery
COPY --from=build /opt/venv /opt/venv
COPY deploy/k8s-entrypoint.sh /usr/local/bin/driver-stats-k8s-entrypoint
RUN chmod 0755 /usr/local/bin/driver-stats-k8s-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# A named volume mounted on /recovery starts out owned by this user.
VOLUME ["/recovery"]
USER 10001:10001
# 9100: our Prometheus metrics (DRIVER_STATS_METRICS_PORT, off unless set);
# 9999: Bytewax process-to-process traffic; 3030: Bytewax dataflow API and
# metrics when BYTEWAX_DATAFLOW_API_ENABLED is set.
EXPOSE 9100 9999 3030
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "bytewax.run", "flows.driver_stats"]
