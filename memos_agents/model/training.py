"""LoRA training inside the model process (peft through transformers' adapter integration).

Bounded: a fixed number of AdamW steps over small batches of the examples, reporting the loss
after every step. The adapter is saved in the standard peft layout (`adapter_config.json`,
`adapter_model.safetensors`) that peft and vLLM load, plus `memos_adapter.json` with the base
model identity, and stays loaded under its name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .protocol import Emit, RequestError

Example = tuple[list[int], list[int]]  # (prompt ids, target ids)
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _batches(
    examples: list[Example], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = [p + t for p, t in examples]
    labels = [[-100] * len(p) + t for p, t in examples]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
        mask[i, : len(r)] = 1
    return ids, lab, mask


def _mean_loss(model: Any, data: list[Example], pad_id: int, bs: int) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data), bs):
            chunk = data[i : i + bs]
            ids, lab, mask = _batches(chunk, pad_id)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += int((lab[:, 1:] != -100).sum())
    return total / max(count, 1)


def train_lora(
    model: Any,
    encode: Callable[[dict[str, Any]], Example],
    pad_id: int,
    base_name: str,
    req: dict[str, Any],
    meta: dict[str, Any],
    emit: Emit,
    cancel: threading.Event,
) -> dict[str, Any]:
    """Train adapter `req["name"]` on `model`; `encode` turns one example into token ids, and
    `base_name` is written into the adapter config as the base model."""
    from peft import LoraConfig

    name: str = req["name"]
    out_dir = Path(req["path"])
    steps = int(req.get("steps", 30))
    if not 1 <= steps <= 2000:
        raise RequestError(400, "steps must be between 1 and 2000")
    examples = req.get("examples") or []
    if not examples:
        raise RequestError(400, "no training examples")
    data = [encode(e) for e in examples]
    data = [(p, t) for p, t in data if t]
    limit = int(req.get("max_example_tokens", 256))
    data = [(p[-limit:], t[:limit]) for p, t in data]
    bs = max(1, int(req.get("batch_size", 8)))
    seed = int(req.get("seed", 0))

    torch.manual_seed(seed)
    rng = random.Random(seed)
    cfg = LoraConfig(
        r=int(req.get("rank", 8)),
        lora_alpha=int(req.get("alpha", 16)),
        target_modules=list(req.get("target_modules") or DEFAULT_TARGETS),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    for p in model.parameters():
        p.requires_grad_(False)
    model.add_adapter(cfg, adapter_name=name)
    model.enable_adapters()
    model.set_adapter(name)
    trainable = [p for n, p in model.named_parameters() if "lora_" in n and f".{name}." in n]
    for p in trainable:
        p.requires_grad_(True)
    started = time.perf_counter()
    try:
        loss_start = _mean_loss(model, data, pad_id, bs)
        emit({"step": 0, "steps": steps, "loss": loss_start})
        opt = torch.optim.AdamW(trainable, lr=float(req.get("lr", 1e-3)), weight_decay=0.0)
        order: list[int] = []
        last = loss_start
        for step in range(1, steps + 1):
            if cancel.is_set():
                raise RequestError(499, "distillation cancelled")
            if len(order) < bs:
                more = list(range(len(data)))
                rng.shuffle(more)
                order += more
            batch, order = [data[i] for i in order[:bs]], order[bs:]
            ids, lab, mask = _batches(batch, pad_id)
            out = model(input_ids=ids, attention_mask=mask, labels=lab)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            last = float(out.loss)
            emit({"step": step, "steps": steps, "loss": last})
        loss_end = _mean_loss(model, data, pad_id, bs)
    except BaseException:
        model.delete_adapter(name)
        raise
    finally:
        for p in trainable:
            p.requires_grad_(False)
    state = {
        k: v.detach().contiguous().clone() for k, v in model.get_adapter_state_dict(name).items()
    }
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg.base_model_name_or_path = base_name
    cfg.save_pretrained(str(tmp))
    meta = {**meta, "loss_start": loss_start, "loss_end": loss_end, "steps": steps, "seed": seed}
    (tmp / "memos_adapter.json").write_text(json.dumps(meta, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    model.disable_adapters()
    return {
        "name": name,
        "path": str(out_dir),
        "steps": steps,
        "examples": len(data),
        "loss_start": loss_start,
        "loss_end": loss_end,
        "last_step_loss": last,
        "trainable_params": sum(p.numel() for p in trainable),
        "seconds": round(time.perf_counter() - started, 2),
        "bytes": sum(f.stat().st_size for f in out_dir.iterdir()),
    }
