#!/usr/bin/env bash
# Prepares the Argilla server's own venv (argilla-server 2.8.0 + noida-db 0.2.3, ~75 s and ~580 MB once) under the
# Forma cache, so `forma review serve` and the review tests start at once. It must stay apart from .venv: the server
# pins pydantic 2.9, httpx 0.27 and typer 0.9. Safe to re-run: a stamp file marks a finished install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
.venv/bin/python -c "from review.server import ensure_server_venv; print('argilla server venv:', ensure_server_venv(python='$(command -v "$PY")'))"
