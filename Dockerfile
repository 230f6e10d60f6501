# redshake container image: `docker build -t redshake .`
#
#   docker run -v $PWD/sync.toml:/etc/sync/sync.toml:ro -v shake-data:/data -p 8080:8080 redshake
#   docker run -e SYNC=true -e SHAKE_SRC_ADDRESS=a:6379 -e SHAKE_DST_ADDRESS=b:6379 redshake
#
# The config file is /etc/sync/sync.toml (CMD); with SYNC=true or SCAN=true and no file there,
# the SHAKE_* variables are the config (RedisShake's env-only mode). Work files (log, spool,
# checkpoints) go to /data: set `dir = "/data"` in [advanced] of a mounted config.

# build stage: wheels that may need a compiler (python-lzf, lupa on some platforms)
FROM python:3.12-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/redshake
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN /opt/redshake/bin/pip install --no-cache-dir /src

FROM python:3.12-slim
COPY --from=build /opt/redshake /opt/redshake
RUN groupadd --system --gid 10001 redshake \
 && useradd --system --uid 10001 --gid redshake --home-dir /data --shell /usr/sbin/nologin redshake \
 && mkdir -p /data /etc/sync \
 && chown redshake:redshake /data
ENV PATH=/opt/redshake/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SHAKE_DIR=/data \
    SHAKE_STATUS_PORT=8080
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
# healthy = the status server answers (a config file must set status_port = 8080)
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('SHAKE_STATUS_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["redshake"]
CMD ["/etc/sync/sync.toml"]
