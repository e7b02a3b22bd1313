# One image for every process of the broker; the command picks the service:
#   docker run IMAGE services.registry --host 0.0.0.0 --port 8080
#   docker run IMAGE services.consent  --host 0.0.0.0 --port 8080
#   docker run IMAGE services.transfer --host 0.0.0.0 --port 8080   (TRANSFER_WORKERS_IN_PROCESS=0 with workers apart)
#   docker run IMAGE services.transfer worker --count 2
#   docker run IMAGE services.consent --migrate-only                 (database migrations, then exit)
# Kubernetes manifests: deploy/k8s (README "Run in production").

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
COPY examples ./examples
# the project and its runtime dependencies only: no test extras
RUN /opt/venv/bin/pip install .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 broker \
 && useradd --system --uid 10001 --gid broker --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin broker
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# nothing is written under the working directory: the root filesystem may be read-only
WORKDIR /app
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m"]
CMD ["services.registry", "--host", "0.0.0.0", "--port", "8080"]
