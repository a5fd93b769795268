"""Run a module as ``python -m`` would, after ``sglang_env.prepare()`` (the import-only
torchvision stand-in, see sglang_env.py): for child processes that import SGLang's host-pool
modules, e.g. ``python tests/sglang_real/run_with_stand_in.py hicache_core.cli.main check ...``."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for sglang_real
    from sglang_real.sglang_env import prepare

    prepare()
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
