# Engagement Index: one image for the streaming worker, the HTTP collector and the topics job.
#   docker build -t engagement-index:0.1.0 .
#   docker run --rm engagement-index:0.1.0 --help
# The build stage compiles the scoring kernel (rust/, with cargo from the Rust image) into the
# project's wheel and installs it with the locked dependencies (constraints.txt) into a virtual
# environment; the final stage copies only that environment, the topology and the models: no compilers, no
# pip cache, a non-root user. Health is checked by Kubernetes probes (/healthz, /readyz), so
# the image declares no HEALTHCHECK.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUST_IMAGE=rust:1.95-slim-bookworm

# --------------------------------------------------------------------------- rust toolchain
FROM ${RUST_IMAGE} AS rust

# --------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
ENV CARGO_HOME=/usr/local/cargo \
    RUSTUP_HOME=/usr/local/rustup \
    PATH="/usr/local/cargo/bin:${PATH}"
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=rust /usr/local/rustup /usr/local/rustup
# the C linker rustc calls; only in this stage (Debian's current versions of bookworm)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python -m venv /opt/engagement-index
COPY pyproject.toml constraints.txt README.md ./
COPY rust ./rust
COPY src ./src
# the project's wheel (maturin: the kernel and the Python sources), then every dependency from
# the lock file (constraints.txt); the package itself is not editable
RUN /opt/engagement-index/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/engagement-index/bin/pip install --no-cache-dir --constraint constraints.txt \
       /wheels/engagement_index-*.whl \
    && /opt/engagement-index/bin/pip check

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ARG GID=10001
LABEL org.opencontainers.image.title="engagement-index" \
      org.opencontainers.image.description="Real-time engagement scores and lifecycle stages per contact over Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid "${GID}" engagement \
    && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home \
       --home-dir /var/lib/engagement-index --shell /usr/sbin/nologin engagement \
    && install -d -o "${UID}" -g "${GID}" -m 0750 /var/lib/engagement-index
COPY --from=build /opt/engagement-index /opt/engagement-index
COPY streams/ /app/streams/
COPY config/ /app/config/
COPY schemas/ /app/schemas/
ENV PATH="/opt/engagement-index/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENGAGEMENT_INDEX_TOPOLOGY_FILE=/app/streams/topology.yaml \
    ENGAGEMENT_INDEX_MODEL_FILE=/app/config/models/default.yaml \
    ENGAGEMENT_INDEX_COLLECTOR_EVENT_MAP_FILE=/app/config/collector/segment-events.yaml \
    ENGAGEMENT_INDEX_DATA_DIR=/var/lib/engagement-index \
    ENGAGEMENT_INDEX_WEB_BIND=0.0.0.0 \
    ENGAGEMENT_INDEX_COLLECTOR_BIND=0.0.0.0
WORKDIR /app
USER ${UID}:${GID}
# 6066: worker API, health and metrics; 8080: collector
EXPOSE 6066 8080
ENTRYPOINT ["engagement-index"]
CMD ["worker"]
