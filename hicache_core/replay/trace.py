"""Mooncake-format traces: one JSON object per line with ``timestamp`` (ms), ``input_length``,
``output_length`` and ``hash_ids`` (one id per 512-token block)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

#: The first requests of the Mooncake conversation trace (FAST'25, Apache-2.0), bundled so
#: the quick start and the tests need nothing outside the package.
SAMPLE_NAME = "mooncake_conversation_sample.jsonl"


@dataclass(frozen=True)
class TraceRequest:
    index: int
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"timestamp": self.timestamp_ms, "input_length": self.input_length,
                "output_length": self.output_length, "hash_ids": list(self.hash_ids)}


def sample_trace_path() -> Path:
    """The bundled sample trace."""
    return Path(str(resources.files("hicache_core").joinpath("data", SAMPLE_NAME)))


def load_trace(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Read a Mooncake trace; ``limit`` keeps the first N requests. Bad lines name their number."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trace {p} does not exist; give a Mooncake-format .jsonl file "
                                f"(the bundled sample is {sample_trace_path()})")
    out: list[TraceRequest] = []
    with p.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ids = tuple(int(b) for b in row["hash_ids"])
                req = TraceRequest(len(out), float(row.get("timestamp", 0)), int(row["input_length"]),
                                   int(row.get("output_length", 0)), ids)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{p}:{lineno}: not a Mooncake trace line ({type(exc).__name__}: {exc}); each line needs "
                    '"input_length" and "hash_ids" (and optionally "timestamp", "output_length")'
                ) from None
            if req.input_length > len(ids) * 512 or req.input_length < 0:
                raise ValueError(f"{p}:{lineno}: input_length {req.input_length} does not fit "
                                 f"{len(ids)} blocks of 512 tokens")
            out.append(req)
    return out
