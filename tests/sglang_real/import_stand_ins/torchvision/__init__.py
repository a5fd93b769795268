"""IMPORT-ONLY STAND-IN for torchvision, used by hicache's tests of the real sglang package.

Not torchvision. torchvision from the package registry is a CUDA build that cannot import
against the CPU torch of these test machines, and SGLang's storage, host-pool and controller
modules reach two modules that import torchvision at module level only to name things
(``sglang.srt.multimodal.internvl_utils``, ``sglang.srt.configs.deepseek_ocr``): they read
``torchvision.transforms`` and ``InterpolationMode`` when imported and call nothing until an
image model runs. This package provides exactly those names; every callable raises.

It is put on ``sys.path`` only by ``tests/sglang_real/sglang_env.py`` (never installed), after
transformers has been asked whether torchvision is available (it is not, and transformers
caches that answer, so its own image code never tries to use this package).
"""

__version__ = "0.0.0+hicache.import.stand.in"
IS_HICACHE_IMPORT_STAND_IN = True


def _not_torchvision(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError(
        "this is hicache's import-only torchvision stand-in (tests/sglang_real/import_stand_ins); "
        "install a torchvision that matches your torch to run image models"
    )
