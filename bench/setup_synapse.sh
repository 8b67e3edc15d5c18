#!/usr/bin/env bash
# Install a pinned Synapse into bench/.venv-synapse (idempotent).
#
#   bench/setup_synapse.sh            # install/verify the pinned version
#   SYNAPSE_VERSION=1.160.0 bench/setup_synapse.sh
#
# The `postgres` extra (psycopg2) is included, for `run.py --db postgres`.
# Re-running is cheap: if the venv already holds the pinned version, nothing is done.
set -euo pipefail

SYNAPSE_VERSION="${SYNAPSE_VERSION:-1.163.2}"
PYTHON="${PYTHON:-python3}"
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${BENCH_DIR}/.venv-synapse"

installed_version() {
    "${VENV}/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version
print(version("matrix-synapse"))
PY
}

has_psycopg2() {
    "${VENV}/bin/python" -c "import psycopg2" 2>/dev/null
}

if [[ -x "${VENV}/bin/python" && "$(installed_version)" == "${SYNAPSE_VERSION}" ]] && has_psycopg2; then
    echo "synapse ${SYNAPSE_VERSION} already installed in ${VENV}"
    exit 0
fi

if [[ ! -x "${VENV}/bin/python" ]]; then
    echo "creating ${VENV}"
    "${PYTHON}" -m venv "${VENV}"
fi
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
echo "installing matrix-synapse==${SYNAPSE_VERSION} into ${VENV}"
"${VENV}/bin/python" -m pip install --quiet "matrix-synapse[postgres]==${SYNAPSE_VERSION}"
echo "synapse $(installed_version) installed in ${VENV}"
