"""Import-only stand-in of ``torchvision.transforms``: names SGLang imports, nothing that works."""

import enum

from torchvision import _not_torchvision
from torchvision.transforms import functional


class InterpolationMode(enum.Enum):
    """The member names torchvision defines (values as torchvision's)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


Compose = Lambda = Resize = ToTensor = Normalize = _not_torchvision
__all__ = ["Compose", "InterpolationMode", "Lambda", "Normalize", "Resize", "ToTensor", "functional"]
