"""Activation and parameter memory on top of a `MemOS`: what the facade methods
`mem.model()`, `mem.build_activation()`, `mem.generate()`, `mem.distil()` do.

Activation cubes and parameter cubes are MemCubes like any other (versioned in the catalog,
scoped to a user). Their `content` is a path relative to `<data dir>/blobs/`
(`kv/<fingerprint>.safetensors`, `lora/<cube id>/v<version>`), `provenance.derived_from` lists
the plaintext cubes they were made from, and `metadata` holds the fingerprint and model identity.
Before a KV cache is used its fingerprint is recomputed from the current sources and the serving
model; any difference (a source edited or deleted, another model) refuses it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ..catalog import _cube_from_row, cubes_t
from ..cube import (
    Form,
    MemCube,
    Organisation,
    Provenance,
    Scope,
    SourceKind,
    State,
    check_name,
    utcnow,
)
from ..errors import ConfigError, InvalidInput, NotFound
from .client import ActivationRefused, Completion, ModelClient, ModelError, ModelProcess
from .protocol import (
    activation_fingerprint,
    estimate_tokens,
    memory_block,
    memory_messages,
    model_identity,
    source_signature,
)

if TYPE_CHECKING:
    from ..mos import MemOS

MODEL_URL_ENV = "MEMOS_MODEL_URL"
MODEL_CACHE_ENV = "MEMOS_MODEL_CACHE"


def lora_name(cube: MemCube) -> str:
    """The adapter name a parameter cube version is served under."""
    return f"memos-{cube.id}-v{cube.lifecycle.version}"


@dataclass
class Generation:
    """A reply, how fast it came, and which memory forms it used."""

    text: str
    finish_reason: str | None
    ttft_s: float | None
    usage: dict[str, Any]
    timings: dict[str, Any]
    activation: str | None = None
    parameter: str | None = None
    plaintext: list[str] = field(default_factory=list)

    @property
    def cached_tokens(self) -> int:
        return int((self.usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


_STARTED: dict[int, ModelProcess] = {}
_STARTED_LOCK = threading.Lock()


def _stop_started() -> None:
    """At exit: stop the model processes this Python process started (a process killed
    outright is covered by the child's own parent watch)."""
    with _STARTED_LOCK:
        procs = list(_STARTED.values())
        _STARTED.clear()
    for proc in procs:
        with contextlib.suppress(Exception):  # exiting anyway
            proc.stop(timeout=10)


atexit.register(_stop_started)


class ModelRuntime:
    """Per-MemOS connection to the model process. A process MemOS starts belongs to this Python
    process, not to one MemOS object: every MemOS on the data dir shares it, and it runs until
    `stop_model()` or until this process exits."""

    def __init__(self, mem: MemOS) -> None:
        self.data_dir = Path(mem.config.data_dir)
        self.client: ModelClient | None = None
        self.process: ModelProcess | None = None
        self._lock = threading.RLock()

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "model"

    @property
    def cache_dir(self) -> Path:
        env = os.environ.get(MODEL_CACHE_ENV)
        return Path(env) if env else self.data_dir / "models"

    def connect(
        self,
        url: str | None = None,
        *,
        model: str | None = None,
        start: bool = True,
        threads: int | None = None,
        kv_budget_mb: int = 1024,
        timeout: float | None = None,
    ) -> ModelClient:
        with self._lock:
            url = url or os.environ.get(MODEL_URL_ENV)
            if url:
                if self.client is None or self.client.url != url.rstrip("/").removesuffix("/v1"):
                    self._drop_client()
                    client = ModelClient(url)
                    if not client.health(timeout=10.0):
                        client.close()
                        from .client import ModelUnavailable

                        raise ModelUnavailable(f"no model process answers at {url}")
                    self.client = client
                return self.client
            if self.client is not None and self.client.health():
                return self.client
            self._drop_client()
            from filelock import FileLock

            self.state_dir.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.state_dir / "start.lock"), timeout=1800):
                found = ModelProcess.find(self.state_dir)
                if found is None:
                    if not start:
                        from .client import ModelUnavailable

                        raise ModelUnavailable(
                            f"no model process is running for {self.data_dir} "
                            "(start one: `memos-agents model serve`, or mem.model())"
                        )
                    kw: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
                    found = ModelProcess.start(
                        state_dir=self.state_dir,
                        cache_dir=self.cache_dir,
                        model=model,
                        threads=threads,
                        kv_budget_mb=kv_budget_mb,
                        **kw,
                    )
                    self.process = found
                    with _STARTED_LOCK:
                        _STARTED[found.pid] = found
            self.client = ModelClient(found.url)
            if model is not None and self.process is not found:
                served = self.client.model_name
                if Path(model).name not in {served} and model.lower() not in served.lower():
                    raise ConfigError(
                        f"the model process of {self.data_dir} serves {served!r}, not {model!r}; "
                        "stop it first (`memos-agents model stop`)"
                    )
            return self.client

    def _drop_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def close(self) -> None:
        """Drop the connection (the process keeps serving other MemOS objects)."""
        with self._lock:
            self._drop_client()

    def stop(self) -> bool:
        """Stop the model process of this data dir (whoever started it)."""
        with self._lock:
            proc = self.process or ModelProcess.find(self.state_dir)
            self._drop_client()
            self.process = None
            if proc is None:
                return False
            with _STARTED_LOCK:  # the handle that can reap it, if this process started it
                proc = _STARTED.pop(proc.pid, proc)
            return proc.stop()


def runtime(mem: MemOS) -> ModelRuntime:
    rt = mem.__dict__.get("_model_runtime")
    if rt is None:
        rt = mem.__dict__.setdefault("_model_runtime", ModelRuntime(mem))
    return rt


# lookups


def blobs_dir(mem: MemOS) -> Path:
    return Path(mem.config.data_dir) / "blobs"


def derived_cubes(
    mem: MemOS,
    form: Form,
    *,
    vault: str | None,
    user_id: str | None = None,
    live_only: bool = True,
) -> list[MemCube]:
    """Activation or parameter cubes of a scope (plaintext is found through search)."""
    q = select(cubes_t).where(cubes_t.c.form == form.value)
    if vault is not None:
        q = q.where(cubes_t.c.vault == vault)
    if user_id is not None:
        q = q.where(cubes_t.c.user_id == user_id)
    if live_only:
        q = q.where(cubes_t.c.state == State.active.value)
    q = q.order_by(cubes_t.c.created_at, cubes_t.c.id)
    with mem.vault.catalog.engine.connect() as conn:
        return [_cube_from_row(r) for r in conn.execute(q).all()]


def _cube(mem: MemOS, ref: str | MemCube, user_id: str | None, form: Form) -> MemCube:
    cube = mem.vault.get(ref.id if isinstance(ref, MemCube) else ref, scope_user=user_id)
    if cube.form is not form:
        raise InvalidInput(f"cube {cube.id} is {cube.form.value} memory, not {form.value}")
    if not cube.is_live():
        raise InvalidInput(f"cube {cube.id} is {cube.lifecycle.state.value}, not active")
    return cube


def _sources(
    mem: MemOS, refs: Sequence[str | MemCube], user_id: str, vault: str | None
) -> list[MemCube]:
    if isinstance(refs, str | MemCube):
        refs = [refs]
    if not refs:
        raise InvalidInput("no source memories given")
    cubes = [
        _cube(mem, r, user_id, Form.plaintext)
        for r in dict.fromkeys(r.id if isinstance(r, MemCube) else r for r in refs)
    ]
    vaults = {c.scope.vault for c in cubes}
    if len(vaults) > 1 or (vault is not None and vaults != {vault}):
        raise InvalidInput(f"source memories must all be in one vault (got {sorted(vaults)})")
    return cubes


def _new_derived(
    form: Form,
    content: str,
    sources: Sequence[MemCube],
    *,
    user_id: str,
    vault: str,
    by: str | None,
    name: str | None,
    metadata: dict[str, Any],
) -> MemCube:
    tags = [form.value, *([name] if name else [])]
    return MemCube(
        form=form,
        content=content,
        scope=Scope(vault=vault, user_id=user_id),
        provenance=Provenance(
            source_kind=SourceKind.derived,
            source_refs=[],
            derived_from=[c.id for c in sources],
            created_by=by or f"user:{user_id}",
        ),
        organisation=Organisation(
            tags=tags, importance=max(c.organisation.importance for c in sources)
        ),
        metadata=metadata,
    )


def _named(mem: MemOS, form: Form, vault: str, user_id: str, name: str | None) -> MemCube | None:
    if not name:
        return None
    for cube in derived_cubes(mem, form, vault=vault, user_id=user_id):
        if cube.metadata.get("name") == name:
            return cube
    return None


def _store(mem: MemOS, cube: MemCube, previous: MemCube | None, by: str, op: str) -> MemCube:
    if previous is None:
        mem.vault.add([cube], created_by=by)
        return cube
    new = previous.model_copy(deep=True)
    new.content = cube.content
    new.provenance.derived_from = cube.provenance.derived_from
    new.organisation = cube.organisation
    new.metadata = cube.metadata
    new.lifecycle.version = previous.lifecycle.version + 1
    new.lifecycle.updated_at = utcnow()
    mem.vault.write_version(new, op, by, previous.lifecycle.version)
    return new


# activation memory


def build_activation(
    mem: MemOS,
    cube_ids: Sequence[str | MemCube],
    *,
    user_id: str,
    vault: str | None = None,
    name: str | None = None,
    system_prompt: str | None = None,
    parameter: str | MemCube | None = None,
    by: str | None = None,
) -> MemCube:
    """Compute the KV cache of these plaintext memories (rendered as the memory block) in the
    model process, store it as a blob and return its activation cube. With `name`, an existing
    activation cube of that name becomes a new version; an identical one is returned as is."""
    check_name(user_id, "user_id")
    sources = _sources(mem, cube_ids, user_id, vault)
    vault = sources[0].scope.vault
    client = runtime(mem).connect()
    adapter = None
    if parameter is not None:
        pcube = _cube(mem, parameter, user_id, Form.parameter)
        adapter = ensure_adapter(mem, pcube, client)
    identity = model_identity(client.info())
    fp = activation_fingerprint(identity, sources, system_prompt, adapter)
    by = by or f"user:{user_id}"
    for cube in derived_cubes(mem, Form.activation, vault=vault, user_id=user_id):
        same_name = name is None or cube.metadata.get("name") == name
        fresh = cube.metadata.get("fingerprint") == fp
        if fresh and same_name and (blobs_dir(mem) / cube.content).is_file():
            return cube
    rel = f"kv/{fp[:40]}.safetensors"
    block = memory_block([c.content for c in sources], system_prompt)
    built = client.build_activation(
        [{"role": "system", "content": block}],
        fingerprint=fp,
        path=blobs_dir(mem) / rel,
        adapter=adapter,
        meta={"vault": vault, "user_id": user_id},
    )
    meta = {
        "name": name,
        "fingerprint": fp,
        **identity,
        "adapter": adapter,
        "system_prompt": system_prompt,
        "sources": source_signature(sources),
        "tokens": built["tokens"],
        "bytes": built["bytes"],
        "build_s": built["total_s"],
    }
    previous = _named(mem, Form.activation, vault, user_id, name)
    cube = _new_derived(
        Form.activation, rel, sources, user_id=user_id, vault=vault, by=by, name=name, metadata=meta
    )
    stored = _store(mem, cube, previous, by, "rebuild")
    if previous is not None and previous.content != rel:
        _drop_blob(mem, previous.content, keep=rel)
    return stored


def _drop_blob(mem: MemOS, rel: str, keep: str | None = None) -> None:
    """Remove a KV blob no live activation cube points at (caches are rebuilt, not restored)."""
    if rel == keep or not rel.startswith("kv/"):
        return
    for cube in derived_cubes(mem, Form.activation, vault=None):
        if cube.content == rel:
            return
    (blobs_dir(mem) / rel).unlink(missing_ok=True)


def check_activation(mem: MemOS, cube: MemCube, client: ModelClient) -> list[MemCube]:
    """The activation's sources as they are now, or `ActivationRefused` saying what changed."""
    found = mem.vault.catalog.get_many(cube.provenance.derived_from)
    sources = []
    recorded = {s[0]: s for s in cube.metadata.get("sources") or []}
    for cid in cube.provenance.derived_from:
        src = found.get(cid)
        if src is None or not src.is_live():
            state = "erased" if src is None else src.lifecycle.state.value
            raise ActivationRefused(
                f"activation cube {cube.id} is stale: source {cid} is {state}; rebuild it"
            )
        rec = recorded.get(cid)
        if rec is not None and rec[1] != src.lifecycle.version:
            raise ActivationRefused(
                f"activation cube {cube.id} is stale: source {cid} changed "
                f"(version {rec[1]} -> {src.lifecycle.version}); rebuild it"
            )
        sources.append(src)
    info = client.info()
    if not info.get("memos"):
        # a plain OpenAI-compatible server (vLLM): the memories go as text, and the server's
        # own prefix cache stands in for the blob
        return sources
    identity = model_identity(info)
    for key in ("model", "revision", "dtype", "template_sha"):
        if cube.metadata.get(key) != identity[key]:
            raise ActivationRefused(
                f"activation cube {cube.id} was built for {key}={cube.metadata.get(key)!r}; "
                f"the model process has {key}={identity[key]!r}"
            )
    fp = activation_fingerprint(
        identity, sources, cube.metadata.get("system_prompt"), cube.metadata.get("adapter")
    )
    if fp != cube.metadata.get("fingerprint"):
        raise ActivationRefused(f"activation cube {cube.id} does not match its sources; rebuild it")
    if not (blobs_dir(mem) / cube.content).is_file():
        raise ActivationRefused(f"activation blob {cube.content} is missing; rebuild it")
    return sources


# parameter memory


def ensure_adapter(mem: MemOS, cube: MemCube, client: ModelClient) -> str:
    name = lora_name(cube)
    info = client.info()
    if info.get("memos"):
        for key in ("model", "revision"):
            if cube.metadata.get(key) != info.get(key):
                raise ModelError(
                    f"parameter cube {cube.id} was trained on {key}={cube.metadata.get(key)!r}; "
                    f"the model process has {key}={info.get(key)!r}"
                )
    path = blobs_dir(mem) / cube.content
    if not (path / "adapter_config.json").is_file():
        raise ModelError(f"adapter files of parameter cube {cube.id} are missing at {path}")
    client.load_adapter(name, path)
    return name


def distil(
    mem: MemOS,
    cube_ids: Sequence[str | MemCube] | None = None,
    *,
    user_id: str,
    vault: str | None = None,
    tag: str | None = None,
    name: str | None = None,
    steps: int = 30,
    lr: float = 1e-3,
    rank: int = 8,
    seed: int = 0,
    progress: Callable[[dict[str, Any]], None] | bool | None = None,
    by: str | None = None,
) -> MemCube:
    """Train a LoRA adapter on these plaintext memories (or every live memory of the user with
    `tag`) and store it as a parameter cube. With `name`, an existing parameter cube of that name
    gets a new version (earlier adapters stay on disk for history and rollback)."""
    from .examples import training_examples

    check_name(user_id, "user_id")
    if cube_ids is None:
        if not tag:
            raise InvalidInput("give the memories to distil (cube ids) or a tag")
        live = mem.list(user_id=user_id, vault=vault, limit=100_000)
        cube_ids = [
            c.id for c in live if c.form is Form.plaintext and tag in c.organisation.tags
        ]
        if not cube_ids:
            raise NotFound(f"no live memories of {user_id} tagged {tag!r}")
        name = name or tag
    sources = _sources(mem, cube_ids, user_id, vault)
    vault = sources[0].scope.vault
    client = runtime(mem).connect()
    info = client.info()
    by = by or f"user:{user_id}"
    previous = _named(mem, Form.parameter, vault, user_id, name)
    cube = _new_derived(
        Form.parameter, "", sources, user_id=user_id, vault=vault, by=by, name=name, metadata={}
    )
    if previous is not None:
        cube.id = previous.id
        cube.lifecycle.version = previous.lifecycle.version + 1
    rel = f"lora/{cube.id}/v{cube.lifecycle.version}"
    cube.content = rel
    examples = training_examples(sources)
    callback, close = _progress(progress, steps, name or "distil")
    try:
        result = client.distil(
            name=lora_name(cube),
            path=blobs_dir(mem) / rel,
            examples=examples,
            progress=callback,
            steps=steps,
            lr=lr,
            rank=rank,
            alpha=2 * rank,
            seed=seed,
            meta={"cube_id": cube.id, "version": cube.lifecycle.version},
        )
    finally:
        close()
    cube.metadata = {
        "name": name,
        **{k: info.get(k) for k in ("model", "revision", "dtype")},
        "sources": source_signature(sources),
        "examples": len(examples),
        "steps": steps,
        "lr": lr,
        "rank": rank,
        "seed": seed,
        "loss_start": result["loss_start"],
        "loss_end": result["loss_end"],
        "seconds": result["seconds"],
        "bytes": result["bytes"],
        "trainable_params": result["trainable_params"],
    }
    return _store(mem, cube, previous, by, "retrain")


def _progress(
    progress: Callable[[dict[str, Any]], None] | bool | None, steps: int, label: str
) -> tuple[Callable[[dict[str, Any]], None] | None, Callable[[], None]]:
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"distil {label}", unit="step")

        def update(event: dict[str, Any]) -> None:
            bar.n = int(event.get("step", 0))
            bar.set_postfix(loss=f"{event.get('loss', 0):.3f}")
            bar.refresh()

        return update, bar.close
    if callable(progress):
        return progress, lambda: None
    return None, lambda: None


# generation


def _normalise(prompt: Any) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidInput("prompt must not be empty")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, dict):
        prompt = [prompt]
    out = []
    for m in prompt:
        if isinstance(m, dict):
            out.append({"role": str(m.get("role", "user")), "content": str(m.get("content", ""))})
        elif hasattr(m, "content"):
            from .chat import to_openai

            out.append(to_openai(m))
        else:
            raise InvalidInput("messages must be strings, dicts or LangChain messages")
    if not out:
        raise InvalidInput("no messages given")
    return out


@dataclass
class _Prepared:
    client: ModelClient
    messages: list[dict[str, Any]]
    model: str | None
    activation: dict[str, Any] | None
    used: Generation
    touch: list[str]


def _prepare(
    mem: MemOS,
    prompt: Any,
    *,
    user_id: str,
    vault: str | None,
    memories: Sequence[str | MemCube] | None,
    activation: str | MemCube | None,
    parameter: str | MemCube | None,
    plan: Any,
    system_prompt: str | None,
) -> _Prepared:
    check_name(user_id, "user_id")
    if plan is not None:
        activation = activation or plan.activation
        parameter = parameter or plan.parameter
        memories = list(memories or []) + [i for i in plan.plaintext if i not in (memories or [])]
    messages = _normalise(prompt)
    client = runtime(mem).connect()
    used = Generation("", None, None, {}, {})
    texts: list[str] = []
    seen: set[str] = set()
    touch: list[str] = []
    act_spec = None
    adapter = None
    if parameter is not None:
        pcube = _cube(mem, parameter, user_id, Form.parameter)
        adapter = ensure_adapter(mem, pcube, client)
        used.parameter = pcube.id
        touch.append(pcube.id)
    if activation is not None:
        acube = _cube(mem, activation, user_id, Form.activation)
        sources = check_activation(mem, acube, client)
        if (acube.metadata.get("adapter") or None) != adapter:
            raise ActivationRefused(
                f"activation cube {acube.id} was computed under adapter "
                f"{acube.metadata.get('adapter')!r}; this request uses {adapter!r}"
            )
        own_prompt = acube.metadata.get("system_prompt")
        if system_prompt is not None and system_prompt != own_prompt:
            raise InvalidInput("system_prompt differs from the one the activation was built with")
        system_prompt = own_prompt
        texts += [s.content for s in sources]
        seen.update(s.id for s in sources)
        used.activation = acube.id
        touch += [acube.id, *(s.id for s in sources)]  # used memories stay hot
        if client.is_memos:
            act_spec = {
                "blob": str(blobs_dir(mem) / acube.content),
                "fingerprint": acube.metadata["fingerprint"],
            }
    if memories:
        refs = [m.id if isinstance(m, MemCube) else m for m in memories]
        extra = [r for r in dict.fromkeys(refs) if r not in seen]
        if extra:
            found = _sources(mem, extra, user_id, vault)
            texts += [c.content for c in found]
            used.plaintext = [c.id for c in found]
            touch += used.plaintext
    msgs = memory_messages(texts, messages, system_prompt)
    return _Prepared(client, msgs, adapter, act_spec, used, touch)


def generate(
    mem: MemOS,
    prompt: Any,
    *,
    user_id: str,
    vault: str | None = None,
    memories: Sequence[str | MemCube] | None = None,
    activation: str | MemCube | None = None,
    parameter: str | MemCube | None = None,
    plan: Any = None,
    system_prompt: str | None = None,
    max_tokens: int = 256,
    temperature: float = 0.0,
    stop: list[str] | None = None,
    seed: int | None = None,
    on_token: Callable[[str], None] | None = None,
) -> Generation:
    """Answer with the local model. `memories` go in as text; `activation` reuses a stored KV
    cache of its memories (same reply as sending them as text, faster); `parameter` loads a
    LoRA adapter for this request; `plan` (from `mem.scheduler.plan`) supplies all three."""
    p = _prepare(
        mem,
        prompt,
        user_id=user_id,
        vault=vault,
        memories=memories,
        activation=activation,
        parameter=parameter,
        plan=plan,
        system_prompt=system_prompt,
    )
    done: Completion = p.client.chat(
        p.messages,
        model=p.model,
        max_tokens=max_tokens,
        temperature=temperature,
        stop=stop,
        seed=seed,
        activation=p.activation,
        on_token=on_token,
    )
    mem.vault.catalog.touch(p.touch, utcnow())
    out = p.used
    out.text, out.finish_reason, out.ttft_s = done.text, done.finish_reason, done.ttft_s
    out.usage, out.timings = done.usage, done.timings
    return out


def stream(mem: MemOS, prompt: Any, **kw: Any) -> Iterator[str]:
    """`generate`, as an iterator of text pieces."""
    opts = {k: kw.pop(k) for k in ("max_tokens", "temperature", "stop", "seed") if k in kw}
    p = _prepare(
        mem,
        prompt,
        **{
            "vault": None,
            "memories": None,
            "activation": None,
            "parameter": None,
            "plan": None,
            "system_prompt": None,
            **kw,
        },
    )
    yield from p.client.stream(p.messages, model=p.model, activation=p.activation, **opts)
    mem.vault.catalog.touch(p.touch, utcnow())


def estimate_block_tokens(texts: Sequence[str]) -> int:
    return estimate_tokens(memory_block(list(texts)))
