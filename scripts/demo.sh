#!/usr/bin/env bash
# The quick start's main job: a reference node with the file backend (in a temp dir) serves the
# bundled sample of the Mooncake conversation trace while its L3 backend is detached, attached
# again and switched to a second store over the SGLang admin API. Prints the tables, writes a
# plot, exits 0 only when no request failed and no page failed verification.
#
#   bash scripts/demo.sh [--workdir DIR] [--limit N] [--plot FILE.png] [--json]
#
# Uses ./.venv (from scripts/setup.sh) when present, else the hicache on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${HICACHE_VENV:-.venv}"
if [ -x "$venv/bin/hicache" ]; then
  hicache="$venv/bin/hicache"; python="$venv/bin/python"
elif command -v hicache >/dev/null 2>&1; then
  hicache="$(command -v hicache)"; python="$(dirname "$hicache")/python"
  [ -x "$python" ] || python=python3
else
  echo "demo.sh: hicache is not installed; run: bash scripts/setup.sh" >&2
  exit 1
fi
if ! "$python" -c "import hicache_file" 2>/dev/null; then
  echo "demo.sh: the file backend is not installed; run: pip install -e plugins/hicache_file" >&2
  exit 1
fi
exec "$hicache" demo "$@"
