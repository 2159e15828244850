# draftgate gateway image (CPU torch; for GPU serving use the `gpu` compose profile's vLLM server).
# Installs exactly what scripts/install.sh installs (and CI tests): every dependency pinned and
# hash-checked from requirements.lock, torch 2.13.0 first and outside the lock (see install.sh).
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True
# Swap in your own CUDA torch here; the range in pyproject.toml accepts it.
RUN pip install --no-deps "torch==2.13.0"
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY local_engine local_engine
COPY router router
COPY policies policies
COPY ledger ledger
RUN pip install --no-deps --no-build-isolation . && pip check
# Not root: the gateway runs model code and a sandbox for code verifiers. Its data dir (the SQLite
# ledger by default, the crash journals always) is the one writable place.
RUN useradd --create-home --uid 10001 draftgate && mkdir -p /app/draftgate-data \
    && chown draftgate /app/draftgate-data
USER draftgate
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:4000/readyz').status == 200 else 1)"
CMD ["draftgate", "serve", "--host", "0.0.0.0", "--port", "4000"]
