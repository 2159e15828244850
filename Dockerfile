# draftgate gateway image (CPU torch; for GPU serving use the `gpu` compose profile's vLLM server).
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
# Pin torch first so the range in pyproject.toml never pulls another build; swap in your own CUDA torch here.
RUN pip install "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY local_engine local_engine
COPY router router
COPY policies policies
COPY ledger ledger
RUN pip install .
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:4000/readyz').status == 200 else 1)"
CMD ["draftgate", "serve", "--host", "0.0.0.0", "--port", "4000"]
