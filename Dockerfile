# ppr-audit: API and GPU worker image (one image, two commands).
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PPR_DATA_DIR=/var/lib/ppr PPR_ARTIFACTS=/var/lib/ppr/artifacts

RUN useradd --create-home --uid 10001 ppr && mkdir -p /var/lib/ppr && chown ppr /var/lib/ppr
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ppr_engine ./ppr_engine
COPY service ./service
COPY worker ./worker
COPY client ./client
COPY ppr_cli ./ppr_cli
# torch and torchvision come with the base image; install the rest of the service stack.
RUN pip install ".[service]"

USER ppr
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"
CMD ["ppr", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
