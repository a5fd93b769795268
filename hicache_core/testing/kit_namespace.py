"""What a key names: one page of one pool. Namespace isolation and odd keys.

A page hash names tokens, not bytes: the same key under another model, shard, dtype, layout
or page geometry is other KV. A page written under one config/pool must be a miss for every
incompatible one (through v1, the tensor path and ``exists``), never a hit with other bytes.
Keys a backend cannot store as they are (very long, non-hex, dots, slashes, unicode) either
work or are refused cleanly (False, or ``ValueError``), and two keys never share a page.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hicache_core.spec.errors import HiCacheError
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing.kit_base import Connect, Connected, Keys, KitBase
from hicache_core.testing.pages import (
    fill_pages,
    logical_bytes,
    read_page_bytes,
    scattered_alloc,
)
from hicache_core.testing.verdicts import describe_mismatch, violated

_SAME_SIZE_DTYPE = {torch.bfloat16: torch.float16, torch.float16: torch.bfloat16, torch.float32: torch.int32}


def _variants(
    shape: dict[str, Any], model: str
) -> dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """id -> (what differs in words, writer's config, reader's config, reader's pool shape)."""
    dtype = shape["dtype"]
    other = _SAME_SIZE_DTYPE.get(dtype, torch.float16 if dtype != torch.float16 else torch.bfloat16)
    h, d, L, p = shape["head_num"], shape["head_dim"], shape["layer_num"], shape["page_size"]
    return {
        "model": (f"model {model!r} was served to model {model + '-other'!r}", {}, {"model_name": model + "-other"}, {}),
        "tp_rank": ("tp_rank 0 (of 2) was served to tp_rank 1 (of 2)",
                    {"tp_rank": 0, "tp_size": 2}, {"tp_rank": 1, "tp_size": 2}, {}),
        "tp_size": ("tp_size 1 was served to tp_size 2 (tp_rank 0 of both)", {}, {"tp_rank": 0, "tp_size": 2}, {}),
        "pp_rank": ("pp_rank 0 (of 2) was served to pp_rank 1 (of 2)",
                    {"pp_rank": 0, "pp_size": 2}, {"pp_rank": 1, "pp_size": 2}, {}),
        "attn_cp_rank": ("attention-cp rank 0 (of 2) was served to attention-cp rank 1 (of 2)",
                         {"attn_cp_rank": 0, "attn_cp_size": 2}, {"attn_cp_rank": 1, "attn_cp_size": 2}, {}),
        "dtype": (f"dtype {dtype} was served to a {other} pool of the same byte size", {}, {}, {"dtype": other}),
        "geometry_heads": (f"{h} heads x head_dim {d} was served to a {2 * h} heads x head_dim {d // 2} pool "
                           "(same page bytes)", {}, {}, {"head_num": 2 * h, "head_dim": d // 2}),
        "geometry_layers": (f"{L} layers x page_size {p} was served to a {2 * L} layers x page_size {p // 2} "
                            "pool (same page bytes)", {}, {}, {"layer_num": 2 * L, "page_size": p // 2}),
    }


_VARIANT_IDS = ["model", "tp_rank", "tp_size", "pp_rank", "attn_cp_rank", "dtype", "geometry_heads",
                "geometry_layers"]

#: (label, key suffix): keys that are not 64 hex characters. Pairs that a careless backend
#: truncates, case-folds or sanitises to one name sit next to each other.
_ODD_KEYS: list[tuple[str, str]] = [
    ("300-character key ending in 1", "-" + "a" * 300 + "1"),
    ("300-character key ending in 2", "-" + "a" * 300 + "2"),
    ("2000-character key", "-" + "b" * 2000),
    ("key with slashes", "/ab/cd"),
    ("key with underscores", "_ab_cd"),
    ("key with dashes", "-ab-cd"),
    ("key with dots", ".ab.cd"),
    ("key with '..' path parts", "/../../escape"),
    ("key with a space", " with space"),
    ("unicode key", "-ünïcödé-ключ-🔑"),
    ("upper-case key", "-UPPER"),
    ("lower-case key", "-upper"),
    ("key with '@' and a namespace-like tail", "@hc1.other.model"),
    ("key with a backslash and percent", "\\x%2F"),
    # Pairs that differ only past an object store's 1024-byte key limit, in a unicode text
    # that ASCII-with-'?' flattens, in unicode normal form, or in path syntax that a store
    # using keys as relative paths resolves to one name.
    ("1500-character key ending in 1", "-" + "c" * 1500 + "1"),
    ("1500-character key ending in 2", "-" + "c" * 1500 + "2"),
    ("cyrillic key", "-ключи"),
    ("other cyrillic key of the same length", "-замок"),
    ("key with a precomposed accent (NFC)", "-caf\u00e9"),
    ("key with a combining accent (NFD)", "-cafe\u0301"),
    ("key with a '..' that resolves to another key", "/dir/../plain"),
    ("key that a '..' resolves to", "/plain"),
    ("key with a doubled slash", "/d//e"),
    ("key with a single slash", "/d/e"),
    ("key ending in a space", "-tail "),
    ("same key without the trailing space", "-tail"),
    ("key with a NUL character", "-nul\x00tail"),
    ("same key cut at its NUL", "-nul"),
    ("key that the key with an '@' starts with", ""),
]


class NamespaceChecks(KitBase):
    @pytest.mark.parametrize("variant", _VARIANT_IDS)
    def test_namespace_isolation(
        self, variant: str, connect: Connect, keys: Keys, pool_shape: dict[str, Any], storage_config: Any
    ) -> None:
        words, wcfg, rcfg, rshape = _variants(pool_shape, storage_config.model_name or "model")[variant]
        halved = {"geometry_heads": "head_dim", "geometry_layers": "page_size"}.get(variant)
        if halved and pool_shape[halved] % 2:
            pytest.skip(f"the {variant} variant halves {halved}, which is odd in this pool_shape")
        prop = f"namespace isolation: a page written for {words}"
        writer, wpool = self.connect_layout(connect, "page_first", False, **wcfg)
        self.require_sharing(writer, "namespace isolation")
        n = 3
        src = scattered_alloc(wpool, n, seed=300)
        expected = fill_pages(wpool, wpool.indices_to_pages(src), seed=301)
        ks = keys(n)
        self.v1_store_all(prop, writer, ks, src)
        # Control: an instance with the writer's own config sees the pages (else this check proves nothing).
        twin, tpool = connect("page_first", False, **wcfg)
        self.v1_load_all("sharing between instances", twin, tpool, ks, self.alloc(tpool, n), expected,
                         "batch_get_v1 of a second instance with the same config (declared persistent/shared)")
        reader, rpool = connect("page_first", False, pool=rshape, **rcfg)
        self._require_all_miss(prop, reader, rpool, ks, expected)

    def test_namespace_isolation_layout(self, connect: Connect, keys: Keys) -> None:
        """page_first and layer_first pages hold other byte orders: a miss, or the same logical KV."""
        writer, wpool = self.connect_layout(connect, "page_first")
        self.require_sharing(writer, "namespace isolation")
        reader, rpool = self.connect_layout(connect, "layer_first")
        prop = "namespace isolation: a page written from a page_first pool was served to a layer_first pool"
        n = 3
        src = scattered_alloc(wpool, n, seed=310)
        fill_pages(wpool, wpool.indices_to_pages(src), seed=311)
        ks = keys(n)
        self.v1_store_all(prop, writer, ks, src)
        want = [logical_bytes(wpool, p) for p in wpool.indices_to_pages(src)]
        dest = scattered_alloc(rpool, n, seed=312)
        got = self.v1_get(prop, reader, ks, dest)
        for i, (hit, page) in enumerate(zip(got, rpool.indices_to_pages(dest))):
            if hit and logical_bytes(rpool, page) != want[i]:
                violated(prop, f"page {i} holds other KV: read as (kv, layer, token, head, dim) values it "
                               f"{describe_mismatch(logical_bytes(rpool, page), want[i])}")
        for i, (hit, there) in enumerate(zip(got, reader.exists_many(ks))):
            if there and not hit:
                violated(prop, f"exists() says page {i} is stored, but batch_get_v1 cannot read it "
                               "(exists() must only be True for pages get can serve)")

    def _require_all_miss(
        self, prop: str, reader: HiCacheStorage, rpool: Any, ks: list[str], expected: list[bytes]
    ) -> None:
        n = len(ks)
        dest = scattered_alloc(rpool, n, seed=302)
        got = self.v1_get(prop, reader, ks, dest)
        if any(got):
            have = read_page_bytes(rpool, dest)
            i = got.index(True)
            detail = "the same bytes, which are not this pool's KV" if have[i] == expected[i] else (
                f"a page that {describe_mismatch(have[i], expected[i])}")
            violated(prop, f"batch_get_v1 served {sum(got)} of {n} pages as hits; page {i} was {detail}")
        values = reader.batch_get(ks, [rpool.get_dummy_flat_data_page() for _ in ks])
        hits = [i for i, v in enumerate(values or []) if isinstance(v, torch.Tensor)]
        if hits:
            violated(prop, f"batch_get (the tensor path) served pages {hits} as hits")
        there = reader.exists_many(ks)
        if any(there):
            violated(prop, f"exists() says pages {[i for i, t in enumerate(there) if t]} are stored, but get "
                           "cannot serve them (exists() must only be True for pages get can serve)")

    # ------------------------------------------------------------------ odd keys
    def test_odd_keys(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        prop = "odd keys"
        run = keys(1)[0][:16]
        odd = [(label, run + suffix) for label, suffix in _ODD_KEYS]
        src = self.alloc(pool, len(odd))
        expected = fill_pages(pool, pool.indices_to_pages(src), seed=320)
        page = pool.page_size
        accepted: list[bool] = []
        for i, (label, key) in enumerate(odd):
            ok = self._clean(prop, label, "batch_set_v1", lambda k=key, i=i: backend.batch_set_v1([k], src[i * page:(i + 1) * page]))
            accepted.append(ok == [True])
        dest = self.alloc(pool, len(odd))
        by_label = dict(zip((label for label, _ in odd), expected))
        for i, (label, key) in enumerate(odd):
            slot = dest[i * page:(i + 1) * page]
            got = self._clean(prop, label, "batch_get_v1", lambda k=key, s=slot: backend.batch_get_v1([k], s))
            have = read_page_bytes(pool, slot)[0]
            if accepted[i] and got != [True]:
                violated(prop, f"the {label} was stored (batch_set_v1 said True) but batch_get_v1 missed it")
            if got == [True] and have != expected[i]:
                others = {f"the page of the {lb}": data for lb, data in by_label.items() if lb != label}
                violated(prop, f"the {label} served a page that {describe_mismatch(have, expected[i], others)} "
                               "(keys must never collide)")
            if got == [True] and not accepted[i]:
                violated(prop, f"the {label} was refused by batch_set_v1 but batch_get_v1 served it")

    @staticmethod
    def _clean(prop: str, label: str, call: str, fn: Any) -> Any:
        """Run ``fn``; a refusal must be a value or a ValueError/HiCacheError, nothing else."""
        try:
            return fn()
        except (ValueError, HiCacheError):
            return None
        except Exception as exc:
            violated(prop, f"{call} of the {label} raised {type(exc).__name__}: {exc} (refuse an unusable key "
                           "cleanly: return False, or raise ValueError saying why)")
