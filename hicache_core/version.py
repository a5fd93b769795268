"""Versions: the package's own release, and the storage contract backends are built against."""

from __future__ import annotations

__version__ = "0.1.0"

#: The storage contract this core implements, as (major, minor). A backend declares the
#: contract it was written for; a different major is refused, a lower minor is accepted.
CONTRACT_VERSION: tuple[int, int] = (1, 0)


def parse_contract_version(value: object) -> tuple[int, int]:
    """Parse ``"1.0"``, ``(1, 0)`` or ``1`` into ``(major, minor)``.

    Raises ``ValueError`` naming the bad value when it is none of those forms.
    """
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (value[0], value[1])
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, 0)
    if isinstance(value, str):
        parts = value.strip().split(".")
        if 1 <= len(parts) <= 2 and all(p.isdigit() for p in parts):
            return (int(parts[0]), int(parts[1]) if len(parts) == 2 else 0)
    raise ValueError(
        f"contract_version {value!r} is not of the form 'MAJOR.MINOR' (this core implements "
        f"{CONTRACT_VERSION[0]}.{CONTRACT_VERSION[1]})"
    )


def format_contract_version(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"
