# driver-stats: the Bytewax dataflow as a container image.
#
#   docker build -t driver-stats:local .
#   docker run --rm -e DRIVER_STATS_MQTT_URL=mqtt://broker:1883 driver-stats:local
#
# The default command is the documented one (one process, one worker, no
# recovery); docker-compose.yml adds the recovery flags and k8s/ runs
# deploy/k8s-entrypoint.sh, which adds the process id and peer addresses.
#
# A second target, `waxctl`, is the image for `waxctl dataflow deploy`
# (Bytewax's Helm chart); see that stage below and k8s/README.md:
#
#   docker build --target waxctl -t driver-stats:waxctl .
#
# Without --target, docker builds the last stage: the runtime image described above.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Bytewax's own image, for the waxctl target: the tag is our bytewax pin
# (pyproject.toml) and the Python of PYTHON_IMAGE.
ARG BYTEWAX_IMAGE=bytewax/bytewax:0.21.1-python3.11

# --- build: a virtualenv with the project and its pinned dependencies -------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what .dockerignore lets through: pyproject.toml, the packages, deploy/.
COPY . .
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/python -c "import bytewax, driver_stats, flows, cli"

# --- waxctl: the layout Bytewax's Helm chart runs -------------------------------
# Bytewax's image has a virtualenv in /venv and, in its WORKDIR /bytewax,
# entrypoint.sh (the chart's dataflow container: cd $BYTEWAX_WORKDIR, then
# `python -m bytewax.run $BYTEWAX_PYTHON_FILE_PATH` from /venv) and
# entrypoint-recovery.sh (the chart's init-recovery container). This stage
# installs the project with its pinned dependencies into that /venv and keeps
# the rest as it is, so the file waxctl ships
# (k8s/waxctl/driver_stats_dataflow.py) finds all code in the image.
FROM ${BYTEWAX_IMAGE} AS waxctl
COPY pyproject.toml README.md /tmp/driver-stats/
COPY driver_stats /tmp/driver-stats/driver_stats
COPY flows /tmp/driver-stats/flows
COPY cli /tmp/driver-stats/cli
COPY connectors /tmp/driver-stats/connectors
# The base runs as root; the chart runs pods as UID 65532 (podSecurityContext,
# set in k8s/waxctl/values.yaml), and so does `docker run` with this USER.
RUN /venv/bin/pip install --no-cache-dir --disable-pip-version-check /tmp/driver-stats \
    && /venv/bin/pip check \
    && rm -rf /tmp/driver-stats \
    && cd / && /venv/bin/python -c "import bytewax.run, driver_stats, connectors.mqtt, flows.driver_stats, cli" \
    && groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin nonroot
# The chart sets BYTEWAX_PYTHON_FILE_PATH to the file waxctl ships; this
# default makes a plain `docker run` of this image run the flow too.
ENV PATH=/venv/bin:$PATH \
    BYTEWAX_PYTHON_FILE_PATH=flows.driver_stats
USER 65532:65532

# --- runtime (the default target) ----------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
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
