# The serving image: vLLM's OpenAI server plus kvpilot-launch, which turns the container
# kvpilot renders into the vLLM invocation (hf:// sources, host and port).
#   docker build -f images/launcher.Dockerfile -t ghcr.io/kvpilot/kvpilot-vllm:0.1.0 .
ARG VLLM_IMAGE=vllm/vllm-openai:v0.11.0
FROM ${VLLM_IMAGE}
COPY pyproject.toml README.md /opt/kvpilot/
COPY operator /opt/kvpilot/operator
COPY runtime /opt/kvpilot/runtime
# --no-deps: vLLM's image already has what the launcher imports; keep its pins intact.
RUN python3 -m pip install --no-cache-dir --no-deps /opt/kvpilot && rm -rf /opt/kvpilot
ENV KVPILOT_LAUNCH_MODE=vllm
ENTRYPOINT ["kvpilot-launch", "--"]
CMD ["python3", "-m", "vllm.entrypoints.openai.api_server"]
