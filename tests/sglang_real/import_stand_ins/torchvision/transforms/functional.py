"""Import-only stand-in of ``torchvision.transforms.functional``."""

from torchvision import _not_torchvision


def __getattr__(name: str) -> object:
    if name == "InterpolationMode":
        from torchvision.transforms import InterpolationMode

        return InterpolationMode
    if name.startswith("__"):
        raise AttributeError(name)
    return _not_torchvision
