"""Reading backend config values the way operators spell them: byte sizes and on/off flags.

Every backend takes sizes such as ``"4gb"``, ``"64GiB"`` or ``1073741824`` and flags such as
``true``, ``"yes"`` or ``"0"`` from JSON, environment variables and command lines. These
functions give them one meaning everywhere; they raise ``ValueError`` with a plain message,
and each backend wraps it in its own ``BackendConfigError`` that names the key and its source.
"""

from __future__ import annotations

import re
from typing import Any

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

# A number, then an optional unit: k/m/g/t/p, alone or followed by "b" or "ib", or a bare "b".
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgtp])(?:i?b)?|b)?\s*$", re.IGNORECASE)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(value: Any) -> int:
    """Bytes in ``value``: an int, a whole float, or a string such as ``'512MiB'``, ``'4gb'``, ``'1.5g'``.

    Units are powers of 1024 however they are spelled (``'1GB'`` is 2**30 bytes, as in SGLang's
    Mooncake settings): the sizes bound RAM and disk pages. A fractional number is scaled
    first, then rounded down (``'1.5k'`` is 1536). Raises ``ValueError`` for a negative size,
    a bool, or anything else that is not a size.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size must not be negative, got {value}")
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a size such as 1048576, '512MiB' or '64GiB'")
    unit = (match.group(2) or "").lower()
    return int(float(match.group(1)) * (1024 ** _POWERS.get(unit, 0)))


def parse_bool(value: Any, empty: bool | None = None) -> bool:
    """``True``/``False`` from a bool or a word: 1/true/yes/on, 0/false/no/off (any case).

    ``empty`` is what an empty string means; ``None`` (the default) makes it an error.
    Raises ``ValueError`` for anything else.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    if text == "" and empty is not None:
        return empty
    raise ValueError(f"{value!r} is not true or false")
