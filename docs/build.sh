#!/usr/bin/env bash
# Builds the documentation site strictly (any warning fails) into site/ (git-ignored).
# Needs the docs extra: pip install -e '.[docs]'. PYTHON selects the interpreter (default: the
# active virtual environment's python, else .venv/bin/python when it exists, else python3).
# Extra arguments go to `mkdocs build`.
set -euo pipefail
export NO_MKDOCS_2_WARNING=1
export PYTHONDONTWRITEBYTECODE=1  # importing hooks.py must not leave docs/__pycache__ behind
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -n "${VIRTUAL_ENV:-}" ]]; then PYTHON=python
  elif [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python
  else PYTHON=python3; fi
fi
exec "$PYTHON" -m mkdocs build --strict --config-file mkdocs.yml --site-dir site "$@"
