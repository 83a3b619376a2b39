# Voltbourse exchange service.
#   docker build -t voltbourse .
#   docker run -p 8080:8080 -v voltbourse-data:/data -e VOLTBOURSE_OPERATOR_TOKEN=... voltbourse
# Without VOLTBOURSE_DATABASE_URL the service starts its embedded PostgreSQL in /data/pg.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml alembic.ini ./
COPY alembic ./alembic
COPY exchange ./exchange
COPY settlement ./settlement
COPY clients ./clients
# A regular (non-editable) install; the migrations go to /usr/local/share/voltbourse/alembic.
RUN pip install '.[chain]' \
 && rm -rf /src \
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
CMD ["voltbourse", "serve"]
