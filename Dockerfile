FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg setup.py README.md ./
COPY cds_service ./cds_service
COPY hooks ./hooks
RUN pip install --no-cache-dir . && useradd --create-home mgcds
USER mgcds
ENV CDS_AUTH_MODE=jwt CDS_FEEDBACK_DB=/data/feedback.sqlite3
EXPOSE 8080
CMD ["mg-cds", "serve", "--host", "0.0.0.0", "--port", "8080"]
