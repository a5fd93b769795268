"""Mooncake-format traces: one JSON object per line with ``timestamp`` (ms), ``input_length``,
``output_length`` and ``hash_ids`` (one id per block of tokens).

A block is 512 tokens in the Mooncake FAST'25 traces and 16 in Alibaba's Qwen (Bailian)
traces, which share the format. The trace does not say which, so the loader infers it from the
rows' ``input_length`` against their block counts (``infer_block_tokens``), unless told.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

#: The first requests of the Mooncake conversation trace (FAST'25, Apache-2.0), bundled so
#: the quick start and the tests need nothing outside the package.
SAMPLE_NAME = "mooncake_conversation_sample.jsonl"


#: The block size of the Mooncake FAST'25 traces, and the answer when a trace gives no hint.
MOONCAKE_BLOCK_TOKENS = 512
#: Largest block size inferred or accepted (tokens); real traces use 16 to 512.
MAX_BLOCK_TOKENS = 1 << 16


@dataclass(frozen=True)
class TraceRequest:
    index: int
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]
    #: Tokens per block id.
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    def to_json(self) -> dict[str, object]:
        return {"timestamp": self.timestamp_ms, "input_length": self.input_length,
                "output_length": self.output_length, "hash_ids": list(self.hash_ids)}


def sample_trace_path() -> Path:
    """The bundled sample trace."""
    return Path(str(resources.files("hicache_core").joinpath("data", SAMPLE_NAME)))


#: ``--timestamp-unit``: what one unit of a trace's ``timestamp`` is, in milliseconds.
TIMESTAMP_UNITS: dict[str, float] = {"ms": 1.0, "s": 1000.0, "us": 0.001}

_FIELDS_HINT = ('each line is a JSON object with "hash_ids" (a list of non-negative integer block ids) and '
                'optionally "input_length", "timestamp" (ms), "output_length"; other fields are ignored')


def load_trace(path: str | Path, limit: int | None = None, timestamp_unit: str = "ms",
               block_tokens: int | None = None) -> list[TraceRequest]:
    """Read a Mooncake trace; ``limit`` keeps the first N requests.

    Lenient where the meaning is clear, strict where it is not: blank lines and unknown fields
    are skipped; a missing ``timestamp`` or ``output_length`` is 0; a missing ``input_length``
    is every block full; an ``input_length`` that does not match the block count is kept as is
    (the trace's figure caps hits at it, and tokens past the last block never hit). Anything
    else malformed stops the load with an error naming ``file:line`` and the field.
    ``timestamp_unit`` (``ms``, ``s`` or ``us``) converts the timestamps to milliseconds.
    ``block_tokens`` is the tokens per block id; None infers it (``infer_block_tokens``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trace {p} does not exist; give a Mooncake-format .jsonl file "
                                f"(the bundled sample is {sample_trace_path()})")
    if timestamp_unit not in TIMESTAMP_UNITS:
        raise ValueError(f"timestamp unit {timestamp_unit!r} is not one of {', '.join(TIMESTAMP_UNITS)}")
    if block_tokens is not None and not 1 <= block_tokens <= MAX_BLOCK_TOKENS:
        raise ValueError(f"block_tokens {block_tokens} is not in 1..{MAX_BLOCK_TOKENS}")
    scale = TIMESTAMP_UNITS[timestamp_unit]
    out: list[TraceRequest] = []
    no_length: set[int] = set()  # rows without input_length: every block full, once the size is known
    lineno = 0
    try:
        for lineno, line in _lines(p):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = _parse_row(json.loads(line), len(out), scale)
                if row.input_length < 0:
                    no_length.add(row.index)
                out.append(row)
            except (ValueError, KeyError, TypeError, OverflowError) as exc:
                raise ValueError(f"{p}:{lineno}: not a Mooncake trace line ({exc}); {_FIELDS_HINT}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{p}:{lineno + 1}: not text (byte {exc.start} of that line is not UTF-8): give a Mooncake-format "
            ".jsonl file (or one compressed with gzip)"
        ) from None
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip file
        raise ValueError(f"{p}: cannot read it: {exc}") from None
    size = block_tokens if block_tokens is not None else infer_block_tokens(out)
    return [replace(r, block_tokens=size,
                    input_length=len(r.hash_ids) * size if r.index in no_length else r.input_length)
            for r in out]


def infer_block_tokens(requests: Sequence[TraceRequest]) -> int:
    """Tokens per block id, from the rows that give ``input_length`` and at least two blocks.

    Each such row's blocks must cover its input with only the last one partial, so the block is
    at least ``ceil(input_length / blocks)`` tokens and less than twice that for two blocks or
    more; rounded up to a power of two (every real trace's block is one), the most common answer
    over the rows is the trace's block. Rows that disagree (a mismatched ``input_length``) are
    outvoted; a trace with no usable row is taken as Mooncake's 512.
    """
    votes: Counter[int] = Counter()
    for r in requests:
        n = len(r.hash_ids)
        if n >= 2 and r.input_length > 0:
            need = -(-r.input_length // n)
            votes[min(MAX_BLOCK_TOKENS, 1 << (need - 1).bit_length())] += 1
    return votes.most_common(1)[0][0] if votes else MOONCAKE_BLOCK_TOKENS


_GZIP_MAGIC = b"\x1f\x8b"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a text or gzip-compressed file (found by its magic bytes)."""
    with path.open("rb") as raw:
        magic = raw.read(2)
    opened = gzip.open(path, "rb") if magic == _GZIP_MAGIC else path.open("rb")
    with opened as fh:
        # utf-8-sig: a byte-order mark (some editors and Windows tools write one) is not JSON.
        text = io.TextIOWrapper(fh, encoding="utf-8-sig")
        yield from enumerate(text, 1)


def _parse_row(row: object, index: int, ms_per_unit: float) -> TraceRequest:
    if not isinstance(row, dict):
        raise ValueError(f"a JSON {type(row).__name__}, not an object")
    if "hash_ids" not in row:
        raise ValueError('no "hash_ids"')
    raw_ids = row["hash_ids"]
    if not isinstance(raw_ids, list):
        raise ValueError(f'"hash_ids" is a {type(raw_ids).__name__}, not a list')
    ids = tuple(_count(b, "hash_ids") for b in raw_ids)
    input_length = row.get("input_length")
    length = -1 if input_length is None else _count(input_length, "input_length")  # -1: set once blocks are sized
    output = row.get("output_length")
    stamp = row.get("timestamp")
    ts = 0.0 if stamp is None else _number(stamp, "timestamp") * ms_per_unit
    return TraceRequest(index, ts, length, 0 if output is None else _count(output, "output_length"), ids)


def _count(value: object, name: str) -> int:
    """A non-negative integer (``3.0`` is 3; ``3.5``, ``true``, ``"3"`` and ``-1`` are errors)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'"{name}" holds {value!r}, not a non-negative integer')
    return value


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f'"{name}" holds {value!r}, not a finite number')
    return float(value)
