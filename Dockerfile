# Voltbourse exchange service.
#   docker build -t voltbourse .
#   docker run -p 8080:8080 -v voltbourse-data:/data -e VOLTBOURSE_OPERATOR_TOKEN=... voltbourse
# Without VOLTBOURSE_DATABASE_URL the service starts its embedded PostgreSQL in /data/pg.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# node + npm run the Solidity compiler (npm solc, pinned in contracts/package-lock.json)
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm \
 && rm -rf /var/lib/apt/lists/*

# The checkout stays in /app: the contracts are compiled from contracts/src at first start.
WORKDIR /app
COPY pyproject.toml alembic.ini ./
COPY alembic ./alembic
COPY contracts/package.json contracts/package-lock.json ./contracts/
RUN cd contracts && npm ci --no-audit --no-fund --loglevel=error
COPY contracts/src ./contracts/src
COPY exchange ./exchange
COPY settlement ./settlement
COPY clients ./clients
COPY loadtest ./loadtest
RUN pip install -e '.[chain]' \
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
