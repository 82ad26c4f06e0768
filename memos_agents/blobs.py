"""Blob names: where activation (KV cache) and parameter (LoRA) memory lives.

An activation or parameter cube's `content` is a name, never a path: `kv/<40 hex>.safetensors`
(the activation fingerprint) or `lora/<cube id>/v<version>`. `blob_path` is the only way from
a name to a file: it refuses any other shape and anything that resolves outside the blob root
(`..`, absolute paths, symlinks pointing out).
"""

from __future__ import annotations

import re
from pathlib import Path

from .cube import Form
from .errors import InvalidInput

KV_NAME = re.compile(r"kv/[0-9a-f]{40}\.safetensors")
LORA_NAME = re.compile(r"lora/[0-9a-f]{32}/v[1-9][0-9]{0,8}")
_NAMES = {Form.activation: KV_NAME, Form.parameter: LORA_NAME}


def kv_name(fingerprint: str) -> str:
    return check_blob_name(Form.activation, f"kv/{fingerprint[:40]}.safetensors")


def lora_blob_name(cube_id: str, version: int) -> str:
    return check_blob_name(Form.parameter, f"lora/{cube_id}/v{version}")


def check_blob_name(form: Form, name: object) -> str:
    """`name` if it is a well-formed blob name of `form`, else InvalidInput."""
    pattern = _NAMES.get(form)
    if pattern is None:
        raise InvalidInput(f"{form.value} memory has no blob")
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise InvalidInput(f"{name!r} is not a {form.value} blob name ({pattern.pattern})")
    return name


def is_blob_name(form: Form, name: object) -> bool:
    pattern = _NAMES.get(form)
    return pattern is not None and isinstance(name, str) and pattern.fullmatch(name) is not None


def blob_path(root: Path, form: Form, name: object) -> Path:
    """The file (or folder) of blob `name` under `root`; InvalidInput if it is not a blob name
    of `form` or would resolve outside `root`."""
    rel = check_blob_name(form, name)
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise InvalidInput(f"blob {rel!r} resolves outside {base}")
    return base / rel
