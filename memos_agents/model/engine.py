"""The engine inside a model process: one causal LM, its KV caches and LoRA adapters.

Every call that touches the model runs on one worker thread, one at a time, so adapter switches,
training and generation never interleave. Generation is transformers' `generate` (greedy, or
temperature / top-p sampling) over a `DynamicCache`; with activation memory it starts from a fork
of the stored cache, so only the tokens after the cached prefix are computed. A stopping
criterion sees every new token first: it turns tokens into text deltas, cuts at stop strings and
stops on cancellation. A request with a JSON schema is decoded under lm-format-enforcer's token
filter: only tokens that keep the reply a prefix of a JSON value fitting the schema are allowed,
and once the value is complete only EOS.

Automatic prefix caching (as vLLM's): after a generation with activation memory, the KV of the
whole prompt it prefilled stays in a small LRU (`PrefixLRU`), keyed by its token ids and by the
activation fingerprint and adapter it was computed under. The next request under the same
activation and adapter starts from a fork of the entry sharing the longest token prefix with its
prompt (when that is longer than the activation block), so a multi-turn conversation prefills
only its new turn. `MEMOS_PREFIX_CACHE=0` turns it off for the process,
`memos_activation.prefix_cache: false` for one request.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from .kv import BlobRefused, KVEntry, KVPool, cache_nbytes, fork, load_blob, save_blob
from .protocol import ADAPTER_FORMAT, Emit, RequestError, sha256_text
from .runtime import ModelSource
from .training import train_lora

__all__ = ["Emit", "Engine", "GenRequest", "RequestError", "common_prefix"]


@dataclass
class GenRequest:
    messages: list[dict[str, Any]]
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    adapter: str | None = None
    activation: dict[str, Any] | None = None  # {"blob": path, "fingerprint": fp}
    json_schema: dict[str, Any] | None = None  # the reply is a JSON value fitting it


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class _Prefix:
    key: tuple[str, str]  # (activation fingerprint, adapter name or "")
    ids: list[int]
    cache: DynamicCache
    nbytes: int


class PrefixLRU:
    """The KV of recent prompts, at most `max_entries` and `max_bytes`: least recently used out
    first. Entries are never mutated; a user gets a fork of one (see `kv.fork`)."""

    def __init__(self, max_entries: int = 4, max_bytes: int = 512 << 20) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[int, _Prefix] = OrderedDict()
        self._next = 0
        self.hits = self.misses = 0

    def best(self, key: tuple[str, str], ids: list[int]) -> tuple[_Prefix, int] | None:
        """The entry under `key` sharing the longest token prefix with `ids`, and that length."""
        found: tuple[int, _Prefix, int] | None = None
        for n, entry in self._entries.items():
            if entry.key != key:
                continue
            m = common_prefix(ids, entry.ids)
            if found is None or m > found[2]:
                found = (n, entry, m)
        if found is None or found[2] == 0:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(found[0])
        return found[1], found[2]

    def put(self, key: tuple[str, str], ids: list[int], cache: DynamicCache) -> bool:
        nbytes = cache_nbytes(cache)
        if self.max_entries < 1 or nbytes > self.max_bytes:
            return False
        for n in [n for n, e in self._entries.items() if e.key == key and e.ids == ids]:
            del self._entries[n]
        self._entries[self._next] = _Prefix(key, list(ids), cache, nbytes)
        self._next += 1
        while len(self._entries) > self.max_entries or self.used() > self.max_bytes:
            self._entries.popitem(last=False)
        return True

    def used(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def drop_adapter(self, name: str) -> None:
        for n in [n for n, e in self._entries.items() if e.key[1] == name]:
            del self._entries[n]

    def clear(self) -> None:
        self._entries.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._entries),
            "bytes": self.used(),
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
        }


def _crop_to(cache: DynamicCache, tokens: int) -> None:
    """Keep the first `tokens` positions (transformers 5 crops by a negative count only)."""
    over = cache.get_seq_length() - tokens
    if over > 0:
        cache.crop(-over)


def _prefix_cache_env() -> bool:
    return os.environ.get("MEMOS_PREFIX_CACHE", "1").strip().lower() not in ("0", "false", "no")


class _TextOut(StoppingCriteria):
    """What one generation produced, token by token: `generate` calls it after every new token,
    before the next forward pass. It emits text deltas (holding back half of a multi-byte
    character), cuts the text at the first stop string, and stops at EOS, a stop string or
    cancellation."""

    def __init__(
        self,
        tok: Any,
        eos_ids: set[int],
        stop: list[str],
        emit: Emit,
        cancel: threading.Event,
        prompt_len: int,
    ) -> None:
        self.tok, self.eos_ids, self.stop, self.emit, self.cancel = tok, eos_ids, stop, emit, cancel
        self.seen = prompt_len
        self.produced: list[int] = []
        self.text = ""
        self.finish = "length"
        self.first_token_at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = False
        for nxt in input_ids[0, self.seen :].tolist():
            self.seen += 1
            done = done or self._take(int(nxt))
        if not done and self.cancel.is_set():
            self.finish, done = "cancelled", True
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def _take(self, nxt: int) -> bool:
        """One new token; True when generation should stop."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if nxt in self.eos_ids:
            self.finish = "stop"
            return True
        self.produced.append(nxt)
        full = self.tok.decode(self.produced, skip_special_tokens=True)
        if full.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return False
        hit = min((i for s in self.stop if (i := full.find(s)) >= 0), default=-1)
        if hit >= 0:
            full = full[:hit]
            self.finish = "stop"
        if len(full) > len(self.text):
            self.emit({"delta": full[len(self.text) :]})
            self.text = full
        return self.finish == "stop"


def json_token_data(tok: Any, eos_ids: set[int]) -> Any:
    """lm-format-enforcer's view of a vocabulary: each regular token's text (with the leading
    space it has after another token) and whether it starts a word. Built here rather than with
    `lmformatenforcer.integrations.transformers`, which does not import under transformers 5
    (`transformers.tokenization_utils.PreTrainedTokenizerBase` is gone)."""
    from lmformatenforcer import TokenEnforcerTokenizerData

    special = set(tok.all_special_ids)
    zero = tok.encode("0", add_special_tokens=False)[-1]
    regular = []
    for i in range(len(tok)):
        if i in special:
            continue
        after_zero = tok.decode([zero, i])[1:]
        regular.append((i, after_zero, len(after_zero) > len(tok.decode([i]))))

    def decode(ids: list[int]) -> str:
        return str(tok.decode(ids)).rstrip("\ufffd")

    return TokenEnforcerTokenizerData(regular, decode, sorted(eos_ids), False, len(tok))


class _SchemaLogits(LogitsProcessor):
    """Masks every token that would take the reply off the JSON schema (greedy decoding then
    picks the likeliest allowed token); once the JSON value is complete, only EOS is left. The
    reply is compact: at most one whitespace character in a row."""

    def __init__(self, token_data: Any, schema: dict[str, Any], prompt_len: int) -> None:
        from lmformatenforcer import CharacterLevelParserConfig, JsonSchemaParser, TokenEnforcer

        try:
            parser = JsonSchemaParser(schema)
        except Exception as exc:  # lm-format-enforcer reads the schema with pydantic
            raise RequestError(400, f"unsupported JSON schema: {exc}") from exc
        self.enforcer = TokenEnforcer(token_data, parser)
        parser.config = CharacterLevelParserConfig(  # replaces the defaults TokenEnforcer set
            alphabet=parser.config.alphabet,
            max_consecutive_whitespaces=1,
            force_json_field_order=True,
        )
        self.eos = list(token_data.eos_token_id)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        produced = input_ids[0, self.prompt_len :].tolist()
        allowed = self.enforcer.get_allowed_tokens(produced).allowed_tokens
        if any(e in allowed for e in self.eos):  # the value is complete
            allowed = self.eos
        mask = torch.full_like(scores, float("-inf"))
        mask[:, allowed] = 0.0
        return scores + mask


@contextmanager
def _seeded(seed: int | None, device: str) -> Iterator[None]:
    """A seeded request samples from its own random state and leaves the process's alone."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[] if device == "cpu" else None):
        torch.manual_seed(seed)
        yield


class Engine:
    def __init__(
        self,
        source: ModelSource,
        tokenizer: Any,
        model: Any,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        kv_budget_bytes: int = 1 << 30,
        prefix_cache: bool | None = None,
        prefix_entries: int = 4,
        prefix_bytes: int = 512 << 20,
    ) -> None:
        self.source = source
        self.tok = tokenizer
        self.model = model
        self.dtype = dtype
        self.device = device
        self.pool = KVPool(kv_budget_bytes)
        self.prefix_cache = _prefix_cache_env() if prefix_cache is None else prefix_cache
        self.prefixes = PrefixLRU(prefix_entries if self.prefix_cache else 0, prefix_bytes)
        self.adapters: dict[str, dict[str, Any]] = {}  # name -> {"path", "meta"}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memos-model")
        self._busy = threading.Lock()
        template = getattr(tokenizer, "chat_template", None) or ""
        if not template:
            raise ValueError(f"model {source.name} has no chat template")
        self.template_sha = sha256_text(template)[:16]
        eos = model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(i) for i in [*eos_ids, tokenizer.eos_token_id] if i is not None}
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else int(tokenizer.eos_token_id or 0)
        # requests say how to decode; the checkpoint's suggested sampling defaults never apply
        model.generation_config = GenerationConfig(
            bos_token_id=model.generation_config.bos_token_id,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
        )
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self._token_data: Any = None  # for JSON-schema requests, built on the first one
        self.started_at = time.time()

    # identity
    @property
    def identity(self) -> dict[str, str]:
        return {
            "model": self.source.name,
            "revision": self.source.revision,
            "dtype": self.dtype,
            "template_sha": self.template_sha,
        }

    def info(self) -> dict[str, Any]:
        return {
            **self.identity,
            "memos": True,
            "device": self.device,
            "threads": torch.get_num_threads(),
            "max_context": self.max_context,
            "adapters": sorted(self.adapters),
            "kv_pool": self.pool.stats(),
            "prefix_cache": self.prefixes.stats() if self.prefix_cache else None,
            "started_at": self.started_at,
        }

    # threading
    def submit(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Future[Any]:
        return self._worker.submit(self._exclusive, fn, *args, **kw)

    def _exclusive(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        with self._busy, torch.inference_mode():
            return fn(*args, **kw)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    # tokens
    def render(self, messages: list[dict[str, Any]], generation_prompt: bool = True) -> list[int]:
        try:
            text = self.tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:
            raise RequestError(400, f"cannot apply the chat template: {exc}") from exc
        return self.tok(text, add_special_tokens=False).input_ids

    # adapters
    @contextmanager
    def _adapter(self, name: str | None) -> Iterator[None]:
        if name is not None and name not in self.adapters:
            raise RequestError(404, f"The model `{name}` does not exist.", "NotFoundError")
        if self.adapters:
            if name is None:
                self.model.disable_adapters()
            else:
                self.model.enable_adapters()
                self.model.set_adapter(name)
        yield

    def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        if name in self.adapters:
            raise RequestError(400, f"The lora adapter '{name}' has already been loaded.")
        if name == self.source.name:
            raise RequestError(400, f"'{name}' is the base model's name")
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise RequestError(404, f"no adapter_config.json under {path}")
        meta = self._adapter_meta(folder)
        if meta is not None:
            for key in ("model", "revision"):
                if meta.get(key) != self.identity[key]:
                    raise RequestError(
                        409,
                        f"adapter {path} was trained on {key}={meta.get(key)!r}; this process "
                        f"serves {key}={self.identity[key]!r}",
                    )
        try:
            self.model.load_adapter(str(folder), adapter_name=name)
        except Exception as exc:
            raise RequestError(400, f"cannot load adapter {path}: {exc}") from exc
        self.adapters[name] = {"path": str(folder), "meta": meta or {}}
        self.model.disable_adapters()
        return {"name": name, "path": str(folder)}

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise RequestError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        self.model.delete_adapter(name)
        del self.adapters[name]
        self.pool.evict_where("adapter", name)  # caches computed under it are useless now
        self.prefixes.drop_adapter(name)

    @staticmethod
    def _adapter_meta(folder: Path) -> dict[str, Any] | None:
        try:
            return json.loads((folder / "memos_adapter.json").read_text())
        except (OSError, ValueError):
            return None

    # activation memory
    def build_kv(
        self,
        messages: list[dict[str, Any]],
        fingerprint: str,
        path: str,
        adapter: str | None = None,
        extra_meta: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        ids = self.render(messages, generation_prompt=False)
        if self.max_context and len(ids) >= self.max_context:
            raise RequestError(
                400, f"memory block is {len(ids)} tokens; context is {self.max_context}"
            )
        with self._adapter(adapter):
            cache = DynamicCache(config=self.model.config)
            self.model(
                input_ids=torch.tensor([ids], device=self.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        meta = {
            **{k: str(v) for k, v in (extra_meta or {}).items()},
            **self.identity,
            "adapter": adapter or "",
            "layers": str(len(cache.layers)),
            "tokens": str(len(ids)),
            "created_at": str(time.time()),
        }
        entry = KVEntry(fingerprint, cache, ids, meta, cache_nbytes(cache))
        computed = time.perf_counter() - started
        size = save_blob(Path(path), entry)
        held = self.pool.put(entry)
        return {
            "fingerprint": fingerprint,
            "tokens": len(ids),
            "bytes": size,
            "compute_s": round(computed, 4),
            "total_s": round(time.perf_counter() - started, 4),
            "held": held,
            "path": path,
        }

    def _activation(self, spec: dict[str, Any], adapter: str | None) -> tuple[KVEntry, float]:
        fp = spec.get("fingerprint")
        blob = spec.get("blob")
        if not isinstance(fp, str) or not isinstance(blob, str):
            raise RequestError(400, "memos_activation needs 'blob' and 'fingerprint'")
        started = time.perf_counter()
        entry = self.pool.get(fp)
        if entry is None:
            try:
                entry = load_blob(Path(blob), self.identity, fp, self.model.config, self.device)
            except BlobRefused as exc:
                raise RequestError(409, str(exc), "activation_refused") from exc
            self.pool.put(entry)
        if (entry.meta.get("adapter") or None) != adapter:
            raise RequestError(
                409,
                f"activation was computed under adapter {entry.meta.get('adapter') or None!r}; "
                f"the request uses {adapter!r}",
                "activation_refused",
            )
        return entry, time.perf_counter() - started

    # generation
    def generate(self, req: GenRequest, emit: Emit, cancel: threading.Event) -> dict[str, Any]:
        started = time.perf_counter()
        ids = self.render(req.messages)
        timings: dict[str, float] = {"render_s": time.perf_counter() - started}
        if self.max_context and len(ids) + req.max_tokens > self.max_context:
            raise RequestError(
                400,
                f"This model's maximum context length is {self.max_context} tokens; the request "
                f"has {len(ids)} prompt tokens and asks for {req.max_tokens} more",
            )
        with self._adapter(req.adapter):
            cache, start = self._prefix_cache(ids, req, timings)
            text = _TextOut(self.tok, self.eos_ids, req.stop, emit, cancel, len(ids))
            with _seeded(req.seed, self.device):
                self.model.generate(
                    input_ids=torch.tensor([ids], device=self.device),
                    attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=self.device),
                    past_key_values=cache,
                    generation_config=self._config(req),
                    stopping_criteria=StoppingCriteriaList([text]),
                    logits_processor=self._logits(req, len(ids)),
                )
        self._keep_prefix(ids, req, cache)
        timings["first_token_s"] = (text.first_token_at or time.perf_counter()) - started
        usage = {
            "prompt_tokens": len(ids),
            "completion_tokens": len(text.produced),
            "total_tokens": len(ids) + len(text.produced),
            "prompt_tokens_details": {"cached_tokens": start},
        }
        timings["total_s"] = time.perf_counter() - started
        return {
            "finish_reason": text.finish,
            "text": text.text,
            "usage": usage,
            "timings": {k: round(v, 5) for k, v in timings.items()},
        }

    def _prefix_cache(
        self, ids: list[int], req: GenRequest, timings: dict[str, float]
    ) -> tuple[DynamicCache, int]:
        """The cache generation starts from: a fork of the request's activation memory cropped to
        the prefix it shares with `ids` (at least one token is left to compute), or an empty one;
        and how many tokens of `ids` it already holds."""
        if req.activation:
            entry, timings["activation_s"] = self._activation(req.activation, req.adapter)
            m = min(common_prefix(ids, entry.prefix_ids), len(ids) - 1)
            hit = self._prefix_hit(ids, req)
            if hit is not None and min(hit[1], len(ids) - 1) > m:
                m = min(hit[1], len(ids) - 1)
                cache = fork(hit[0].cache, self.model.config)
                _crop_to(cache, m)
                return cache, m
            if m > 0:
                cache = fork(entry.cache, self.model.config)
                if m < len(entry.prefix_ids):
                    cache.crop(m - len(entry.prefix_ids))
                return cache, m
        return DynamicCache(config=self.model.config), 0

    def _prefix_key(self, req: GenRequest) -> tuple[str, str] | None:
        """Where a request's prompt KV is kept and looked up: under its activation's fingerprint
        and its adapter; None when the prefix cache is off (for the process or the request) or
        the request has no activation memory."""
        act = req.activation
        if not self.prefix_cache or not act or act.get("prefix_cache") is False:
            return None
        return (str(act.get("fingerprint")), req.adapter or "")

    def _prefix_hit(self, ids: list[int], req: GenRequest) -> tuple[_Prefix, int] | None:
        key = self._prefix_key(req)
        return None if key is None else self.prefixes.best(key, ids)

    def _keep_prefix(self, ids: list[int], req: GenRequest, cache: DynamicCache) -> None:
        """Keep the KV of the prompt just prefilled (the generated tokens cropped off)."""
        key = self._prefix_key(req)
        if key is None or cache.get_seq_length() < len(ids):
            return
        _crop_to(cache, len(ids))
        self.prefixes.put(key, ids, cache)

    def _logits(self, req: GenRequest, prompt_len: int) -> LogitsProcessorList | None:
        """The JSON-schema token filter of a request that has a schema (None otherwise)."""
        if req.json_schema is None:
            return None
        if self._token_data is None:
            self._token_data = json_token_data(self.tok, self.eos_ids)
        return LogitsProcessorList([_SchemaLogits(self._token_data, req.json_schema, prompt_len)])

    def _config(self, req: GenRequest) -> GenerationConfig:
        """Exactly the request's decoding: greedy at temperature 0, else temperature and top-p
        sampling; none of the checkpoint's suggested defaults (see `__init__`)."""
        tokens = {"eos_token_id": sorted(self.eos_ids), "pad_token_id": self.pad_id}
        if req.temperature is None or req.temperature <= 0:
            return GenerationConfig(max_new_tokens=req.max_tokens, do_sample=False, **tokens)
        return GenerationConfig(
            max_new_tokens=req.max_tokens,
            do_sample=True,
            temperature=req.temperature,
            top_p=req.top_p if 0 < req.top_p < 1 else 1.0,
            top_k=0,  # off (transformers' default is 50)
            **tokens,
        )

    # evaluation
    def score(
        self, items: list[dict[str, Any]], adapter: str | None = None
    ) -> list[dict[str, Any]]:
        """Mean negative log-likelihood of each item's target: {"text"} scores the whole text,
        {"messages", "completion"} scores the completion after the chat prompt."""
        results = []
        with self._adapter(adapter):
            for item in items:
                prompt_ids, target_ids = self._example_ids(item)
                if not target_ids:
                    raise RequestError(400, "nothing to score")
                ids = torch.tensor([prompt_ids + target_ids], device=self.device)
                logits = self.model(input_ids=ids, use_cache=False).logits[0, :-1].float()
                labels = ids[0, 1:]
                nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
                tail = nll[len(prompt_ids) - 1 :] if prompt_ids else nll
                mean = float(tail.mean())
                results.append(
                    {"nll": mean, "perplexity": math.exp(mean), "tokens": len(target_ids)}
                )
        return results

    def _example_ids(self, item: dict[str, Any]) -> tuple[list[int], list[int]]:
        if "messages" in item:
            prompt = self.render(list(item["messages"]), generation_prompt=True)
            target = self.tok(
                str(item["completion"]) + (self.tok.eos_token or ""), add_special_tokens=False
            ).input_ids
            return prompt, target
        text = str(item.get("text", ""))
        ids = self.tok(text, add_special_tokens=False).input_ids
        bos = self.tok.bos_token_id
        return ([bos] if bos is not None else []), ids

    # parameter memory
    def distil(self, req: dict[str, Any], emit: Emit, cancel: threading.Event) -> dict[str, Any]:
        name = req["name"]
        if name in self.adapters or name == self.source.name:
            raise RequestError(400, f"an adapter named {name!r} is already loaded")
        meta = {
            "format": ADAPTER_FORMAT,
            **self.identity,
            "created_at": time.time(),
            **(req.get("meta") or {}),
        }
        if self.adapters:
            self.model.disable_adapters()
        with torch.inference_mode(False):
            result = train_lora(
                self.model,
                self._example_ids,
                self.pad_id,
                self.source.name,
                req,
                meta,
                emit,
                cancel,
            )
        self.adapters[name] = {"path": result["path"], "meta": meta}
        self.model.disable_adapters()
        return result
