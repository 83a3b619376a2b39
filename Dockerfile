# Voltbourse exchange service.
#   docker build -t voltbourse .
#   docker run -p 8080:8080 -v voltbourse-data:/data -e VOLTBOURSE_OPERATOR_TOKEN=... voltbourse
# Without VOLTBOURSE_DATABASE_URL the service starts its embedded PostgreSQL in /data/pg.
#
# The contracts are not compiled here: the image installs the artifacts compiled at
# build time and committed in settlement/artifacts/ (`make contracts`), so neither
# stage needs node or npm.

# ---- build: a wheel of the project (package data: contract artifacts, static pages;
#      data files: the alembic migrations under <prefix>/share/voltbourse)
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml alembic.ini ./
COPY alembic ./alembic
COPY exchange ./exchange
COPY settlement ./settlement
COPY clients ./clients
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime: the wheel with the `server` extra, not editable, no source tree
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini as PID 1: forwards signals to the service and reaps the embedded PostgreSQL's children.
# Debian bookworm's tini 0.19.0-1 (the glob admits an architecture's binNMU suffix, +bN).
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends 'tini=0.19.0-1*' \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/voltbourse-*.whl)[server]" \
 && rm -rf /wheels \
 && useradd --system --create-home --uid 10001 voltbourse \
 && mkdir -p /data \
 && chown voltbourse:voltbourse /data

ENV VOLTBOURSE_HOST=0.0.0.0 \
    VOLTBOURSE_PORT=8080 \
    VOLTBOURSE_DATA_DIR=/data

VOLUME ["/data"]
WORKDIR /data
USER voltbourse
EXPOSE 8080
ENTRYPOINT ["tini", "--"]
CMD ["voltbourse", "serve"]
