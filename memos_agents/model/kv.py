"""KV caches as activation memory: safetensors blobs on disk, an LRU pool in the model process.

A blob holds, per layer, the key and value states of a memory block, the token ids they were
computed for, and (in its metadata) the fingerprint and the model identity. A blob whose
identity differs from the serving model's, or whose fingerprint differs from the one the caller
expects, is refused.

A stored cache is never mutated: a request gets a `fork`, a new cache object over the same
tensors. Transformers' `DynamicLayer` only ever replaces its tensors (`torch.cat`, slicing), it
never writes into them, so a fork costs nothing and the stored tensors stay as built; any other
layer type is deep-copied.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .protocol import KV_FORMAT


class BlobRefused(Exception):
    """The blob is for another model, another set of memories, or is damaged."""


@dataclass
class KVEntry:
    fingerprint: str
    cache: DynamicCache
    prefix_ids: list[int]
    meta: dict[str, str]
    nbytes: int


def cache_nbytes(cache: DynamicCache) -> int:
    return sum(
        t.numel() * t.element_size()
        for layer in cache.layers
        for t in (layer.keys, layer.values)
        if t is not None
    )


def empty_cache(config: Any, layers: int) -> DynamicCache:
    """A cache with `layers` empty layers, of the types `config` calls for (if given)."""
    if config is not None:
        out = DynamicCache(config=config)
        if len(out.layers) == layers:
            return out
    out = DynamicCache()
    out.layers = [DynamicLayer() for _ in range(layers)]
    return out


def _fill(layer: DynamicLayer, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Point an empty layer at existing tensors (shared, not copied)."""
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values


def fork(cache: DynamicCache, config: Any) -> DynamicCache:
    """A cache a request may grow or crop without touching `cache`."""
    if all(type(layer) is DynamicLayer for layer in cache.layers):
        out = empty_cache(config, len(cache.layers))
        for src, dst in zip(cache.layers, out.layers, strict=True):
            if src.is_initialized:
                _fill(dst, src.keys, src.values)
        return out
    return copy.deepcopy(cache)


def save_blob(path: Path, entry: KVEntry) -> int:
    """Write atomically (temp file, then rename); returns the file size."""
    tensors: dict[str, torch.Tensor] = {
        "prefix_ids": torch.tensor(entry.prefix_ids, dtype=torch.int64)
    }
    for i, layer in enumerate(entry.cache.layers):
        tensors[f"layers.{i}.keys"] = layer.keys.contiguous()
        tensors[f"layers.{i}.values"] = layer.values.contiguous()
    meta = {**entry.meta, "format": KV_FORMAT, "fingerprint": entry.fingerprint}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path.stat().st_size


def load_blob(
    path: Path, identity: dict[str, str], fingerprint: str, config: Any, device: str = "cpu"
) -> KVEntry:
    """Read a blob, refusing it unless it is exactly what the caller asked for."""
    if not path.is_file():
        raise BlobRefused(f"no activation blob at {path}")
    try:
        with safe_open(str(path), framework="pt", device=device) as fh:
            meta = dict(fh.metadata() or {})
            check_meta(meta, identity, fingerprint)
            n_layers = int(meta["layers"])
            prefix_ids = fh.get_tensor("prefix_ids").tolist()
            pairs = [
                (fh.get_tensor(f"layers.{i}.keys"), fh.get_tensor(f"layers.{i}.values"))
                for i in range(n_layers)
            ]
    except BlobRefused:
        raise
    except Exception as exc:  # a truncated or foreign file
        raise BlobRefused(f"cannot read activation blob {path}: {exc}") from exc
    cache = empty_cache(config, n_layers)
    expected = getattr(config, "num_hidden_layers", n_layers) if config is not None else n_layers
    if len(cache.layers) != n_layers or expected != n_layers:
        raise BlobRefused(f"blob has {n_layers} layers; the model has {expected}")
    for layer, (k, v) in zip(cache.layers, pairs, strict=True):
        if k.shape[-2] != len(prefix_ids):
            raise BlobRefused(f"blob {path} is inconsistent: {k.shape[-2]} != {len(prefix_ids)}")
        _fill(layer, k, v)
    return KVEntry(fingerprint, cache, prefix_ids, meta, cache_nbytes(cache))


def check_meta(meta: dict[str, str], identity: dict[str, str], fingerprint: str) -> None:
    if meta.get("format") != KV_FORMAT:
        raise BlobRefused(f"not an activation blob of format {KV_FORMAT} ({meta.get('format')})")
    for key in ("model", "revision", "dtype", "template_sha"):
        if meta.get(key) != identity.get(key):
            raise BlobRefused(
                f"activation blob was built for {key}={meta.get(key)!r}; this model process "
                f"has {key}={identity.get(key)!r}"
            )
    if meta.get("fingerprint") != fingerprint:
        raise BlobRefused(
            "activation blob fingerprint does not match the memories it is used for "
            "(the sources changed or the blob was replaced)"
        )


class KVPool:
    """Caches held in the process, bounded by bytes, least recently used evicted first."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._entries: OrderedDict[str, KVEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    @property
    def used(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def get(self, fingerprint: str) -> KVEntry | None:
        with self._lock:
            entry = self._entries.get(fingerprint)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(fingerprint)
            self.hits += 1
            return entry

    def put(self, entry: KVEntry) -> bool:
        """Hold `entry`, evicting the least recently used; False if it alone exceeds the budget."""
        with self._lock:
            self._entries.pop(entry.fingerprint, None)
            if entry.nbytes > self.budget:
                return False
            while self._entries and self.used + entry.nbytes > self.budget:
                self._entries.popitem(last=False)
                self.evictions += 1
            self._entries[entry.fingerprint] = entry
            return True

    def evict(self, fingerprint: str | None = None) -> int:
        with self._lock:
            if fingerprint is None:
                n = len(self._entries)
                self._entries.clear()
                return n
            return 1 if self._entries.pop(fingerprint, None) is not None else 0

    def evict_where(self, meta_key: str, value: str) -> int:
        """Drop every held cache whose metadata has `meta_key == value`."""
        with self._lock:
            gone = [fp for fp, e in self._entries.items() if e.meta.get(meta_key) == value]
            for fp in gone:
                del self._entries[fp]
            return len(gone)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self.used,
                "budget_bytes": self.budget,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "fingerprints": list(self._entries),
            }
