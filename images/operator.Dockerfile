# The kvpilot operator image (`kvpilot run`), as the Helm chart runs it:
# non-root (65532), read-only root filesystem, args from the chart.
#   docker build -f images/operator.Dockerfile -t ghcr.io/kvpilot/kvpilot-operator:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runtime ./runtime
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["kvpilot"]
CMD ["run"]
