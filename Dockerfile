# The mg-cds service image: gunicorn on port 8080, as the unprivileged user mgcds (uid 10001), with its
# SQLite data in /data (created here and owned by that user, so that a named volume mounted there
# starts out writable). The base image is pinned by version; bump it deliberately.
FROM python:3.11.9-slim-bookworm
WORKDIR /app
COPY setup.cfg setup.py README.md ./
COPY cds_service ./cds_service
COPY hooks ./hooks
RUN pip install --no-cache-dir '.[postgres,tracing]' \
 && groupadd --system --gid 10001 mgcds \
 && useradd --system --uid 10001 --gid mgcds --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mgcds \
 && mkdir -p /data \
 && chown mgcds:mgcds /data \
 && chmod 0750 /data
USER 10001:10001
ENV CDS_AUTH_MODE=jwt CDS_FEEDBACK_DB=/data/feedback.sqlite3
VOLUME ["/data"]
EXPOSE 8080
CMD ["mg-cds", "serve", "--host", "0.0.0.0", "--port", "8080"]
