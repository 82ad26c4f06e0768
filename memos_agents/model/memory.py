"""Activation and parameter memory (`ModelMemory`) and the connection to the model process
(`ModelRuntime`): what the facade methods `mem.model()`, `mem.build_activation()`,
`mem.generate()`, `mem.distil()` do.

Activation cubes and parameter cubes are MemCubes like any other (versioned in the catalog,
scoped to a user). Their `content` is a blob name (`kv/<fingerprint>.safetensors`,
`lora/<cube id>/v<version>`), never a path: every file of it is reached through
`blobs.blob_path` under `<data dir>/blobs/`, which refuses any other shape and anything that
resolves outside (a cube imported with `kv/../../x` is refused, or skipped and logged when the
scheduler demotes it). Every operation takes a per-call `check(cubes)`: the facade's gate, called
with every cube the operation reads once they are resolved, before the model process is reached
or anything is written. `provenance.derived_from` lists
the plaintext cubes they were made from, and `metadata` holds the fingerprint and model identity.
Before a KV cache is used its fingerprint is recomputed from the current sources and the serving
model; any difference (a source edited or deleted, another model) refuses it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..blobs import blob_path, is_blob_name, kv_name, lora_blob_name
from ..cube import (
    LIVE_STATES,
    ActivationMeta,
    Form,
    MemCube,
    Organisation,
    ParameterMeta,
    Provenance,
    Scope,
    SourceKind,
    check_name,
    utcnow,
)
from ..errors import ConfigError, InvalidInput, MemOSError, NotFound
from ..lifecycle import next_version
from .client import (
    API_KEY_ENV,
    ActivationRefused,
    ChatRequest,
    Completion,
    ModelClient,
    ModelError,
    ModelProcess,
)
from .protocol import (
    activation_fingerprint,
    memory_block,
    memory_messages,
    model_identity,
    source_signature,
)

if TYPE_CHECKING:
    from ..vault import MemVault

log = logging.getLogger(__name__)

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
    adapter: str | None = None  # the adapter name the model process served it under
    planned: bool = False  # the scheduler chose the memories (no plan or memories given)
    notes: list[str] = field(default_factory=list)  # the plan's reasons and notes

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
    """Per-MemOS connection to the model process of one data dir. A process MemOS starts
    belongs to this Python process, not to one MemOS object: every MemOS on the data dir shares
    it, and it runs until `stop_model()` or until this process exits."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
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
        api_key: str | None = None,
    ) -> ModelClient:
        """A client of the server at `url` (or `MEMOS_MODEL_URL`, with `api_key` or
        `MEMOS_MODEL_API_KEY`), else of this data dir's process (found or started, with its
        token)."""
        with self._lock:
            url = url or os.environ.get(MODEL_URL_ENV)
            if url:
                return self._connect_url(url, api_key)
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
                        blob_root=self.data_dir / "blobs",
                        **kw,
                    )
                    self.process = found
                    with _STARTED_LOCK:
                        _STARTED[found.pid] = found
            self.client = found.client()
            if model is not None and self.process is not found:
                served = self.client.model_name
                if Path(model).name not in {served} and model.lower() not in served.lower():
                    raise ConfigError(
                        f"the model process of {self.data_dir} serves {served!r}, not {model!r}; "
                        "stop it first (`memos-agents model stop`)"
                    )
            return self.client

    def _connect_url(self, url: str, api_key: str | None) -> ModelClient:
        """The client of the server at `url`: the current one if it is that server's (and no
        other key is given), else a new one that must answer (ModelUnauthorized if it refuses
        the key)."""
        root = url.rstrip("/").removesuffix("/v1")
        current = self.client
        if current is not None and current.url == root and api_key in (None, current.api_key):
            return current
        self._drop_client()
        client = ModelClient(url, api_key=api_key or os.environ.get(API_KEY_ENV) or None)
        try:
            client.ping(timeout=10.0)
        except BaseException:
            client.close()
            raise
        self.client = client
        return client

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


def runtime(mem: Any) -> ModelRuntime:
    """The model runtime of a MemOS (`mem.model_runtime`); kept for older callers."""
    return mem.model_runtime


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


def _rebuilt(previous: MemCube | None, cube: MemCube) -> MemCube:
    """`cube` as the next version of `previous` (same id), or `cube` itself if there is none."""
    if previous is None:
        return cube
    return next_version(
        previous,
        content=cube.content,
        organisation=cube.organisation,
        provenance=previous.provenance.model_copy(
            update={"derived_from": list(cube.provenance.derived_from)}
        ),
        metadata=cube.metadata,
    )


Readable = Callable[[Sequence[MemCube]], list[MemCube]]
Check = Callable[[Sequence[MemCube]], None]


def _checked(check: Check | None, cubes: Sequence[MemCube]) -> None:
    if check is not None:
        check([c for c in cubes if c is not None])


class ModelMemory:
    """Activation (KV cache) and parameter (LoRA) memory of one vault, made and used through
    one model runtime; what the facade methods `mem.build_activation()`, `mem.generate()`,
    `mem.distil()`, `mem.load_parameter()` do.

    `vault` stores the cubes and their versions, `runtime` reaches the model process, `blobs`
    is the folder KV blobs and adapters live in, `default_vault` is the vault a call names none.
    Who may do what is the caller's: each operation takes `check(cubes)` (raises to refuse),
    called with every cube it reads before it reaches the model process or writes; `distil`
    by tag also takes `readable(cubes)` (the cubes the caller may read). Nothing here is bound
    to one principal: one ModelMemory serves every view of a MemOS."""

    def __init__(
        self,
        vault: MemVault,
        runtime: ModelRuntime,
        *,
        blobs: Path,
        default_vault: str = "default",
    ) -> None:
        self.vault = vault
        self.catalog = vault.catalog
        self.runtime = runtime
        self.blobs = Path(blobs)
        self.default_vault = default_vault

    def blob(self, form: Form, name: object) -> Path:
        """The file (KV) or folder (LoRA) of blob `name`; InvalidInput for anything that is not
        a blob name of `form` or resolves outside the blob folder."""
        return blob_path(self.blobs, form, name)

    def _has_blob(self, cube: MemCube) -> bool:
        try:
            return self.blob(cube.form, cube.content).is_file()
        except InvalidInput:
            return False

    # lookups
    def derived(
        self, form: Form, *, vault: str | None, user_id: str | None = None
    ) -> list[MemCube]:
        """Active activation or parameter cubes of a scope (plaintext is found by search)."""
        return self.catalog.active_cubes(form=form, vault=vault, user_id=user_id)

    def _get(self, ref: str | MemCube, user_id: str | None) -> MemCube:
        """The cube `ref` of this user as stored (NotFound for another user's)."""
        return self.vault.get(ref.id if isinstance(ref, MemCube) else ref, scope_user=user_id)

    @staticmethod
    def _require(cube: MemCube, form: Form) -> MemCube:
        if cube.form is not form:
            raise InvalidInput(f"cube {cube.id} is {cube.form.value} memory, not {form.value}")
        if not cube.is_live():
            raise InvalidInput(f"cube {cube.id} is {cube.lifecycle.state.value}, not active")
        return cube

    def live_cube(self, ref: str | MemCube, user_id: str | None, form: Form) -> MemCube:
        """The cube `ref` of this user, if it is live memory of `form`."""
        return self._require(self._get(ref, user_id), form)

    def _fetch(self, refs: Any, user_id: str) -> list[MemCube]:
        """The cubes `refs` (ids or cubes) of this user, once each, as stored: what a check is
        asked about before they are validated as live plaintext (`_valid_sources`)."""
        if isinstance(refs, str | MemCube):
            refs = [refs]
        if not isinstance(refs, Sequence) or not all(isinstance(r, str | MemCube) for r in refs):
            raise InvalidInput("memories must be a list of cube ids or cubes")
        if not refs:
            raise InvalidInput("no source memories given")
        ids = dict.fromkeys(r.id if isinstance(r, MemCube) else r for r in refs)
        return [self._get(r, user_id) for r in ids]

    @classmethod
    def _valid_sources(cls, cubes: list[MemCube], vault: str | None) -> list[MemCube]:
        for c in cubes:
            cls._require(c, Form.plaintext)
        vaults = {c.scope.vault for c in cubes}
        if len(vaults) > 1 or (vault is not None and vaults != {vault}):
            raise InvalidInput(f"source memories must all be in one vault (got {sorted(vaults)})")
        return cubes

    def _sources(
        self, refs: Sequence[str | MemCube], user_id: str, vault: str | None
    ) -> list[MemCube]:
        return self._valid_sources(self._fetch(refs, user_id), vault)

    def _tagged(
        self, tag: str, user_id: str, vault: str | None, readable: Readable | None
    ) -> list[str]:
        """Ids of the live plaintext memories of a user with `tag` that the caller may read."""
        vault = check_name(vault or self.default_vault, "vault")
        cubes = self.catalog.list(
            vault=vault, user_id=user_id, states=sorted(LIVE_STATES), limit=100_000
        )
        live = [c for c in cubes if c.is_live()]
        if readable is not None:
            live = readable(live)
        return [c.id for c in live if c.form is Form.plaintext and tag in c.organisation.tags]

    def _named(self, form: Form, vault: str, user_id: str, name: str | None) -> MemCube | None:
        if not name:
            return None
        for cube in self.derived(form, vault=vault, user_id=user_id):
            meta = ActivationMeta if form is Form.activation else ParameterMeta
            if meta.from_cube(cube).name == name:
                return cube
        return None

    def _store(self, cube: MemCube, previous: MemCube | None, by: str, op: str) -> MemCube:
        """Add `cube`, or write it as the next version of `previous` (made by `_rebuilt`)."""
        if previous is None:
            self.vault.add([cube], created_by=by)
        else:
            self.vault.write_version(cube, op, by, previous.lifecycle.version)
        return cube

    # activation memory
    def build_activation(
        self,
        cube_ids: Sequence[str | MemCube],
        *,
        user_id: str,
        vault: str | None = None,
        name: str | None = None,
        system_prompt: str | None = None,
        parameter: str | MemCube | None = None,
        by: str | None = None,
        check: Check | None = None,
    ) -> MemCube:
        """Compute the KV cache of these plaintext memories (rendered as the memory block) in
        the model process, store it as a blob and return its activation cube. With `name`, an
        existing activation cube of that name becomes a new version; an identical one is
        returned as is."""
        check_name(user_id, "user_id")
        _check_options(name, system_prompt)
        sources = self._fetch(cube_ids, user_id)
        pcube = self._get(parameter, user_id) if parameter is not None else None
        _checked(check, [*sources, *([pcube] if pcube else [])])
        vault = self._valid_sources(sources, vault)[0].scope.vault
        if pcube is not None:
            self.blob(Form.parameter, self._require(pcube, Form.parameter).content)
        client = self.runtime.connect()
        adapter = self.ensure_adapter(pcube, client) if pcube is not None else None
        identity = model_identity(client.info())
        fp = activation_fingerprint(identity, sources, system_prompt, adapter)
        by = by or f"user:{user_id}"
        for cube in self.derived(Form.activation, vault=vault, user_id=user_id):
            meta = ActivationMeta.from_cube(cube)
            same_name = name is None or meta.name == name
            if meta.fingerprint == fp and same_name and self._has_blob(cube):
                return cube
        rel = kv_name(fp)
        block = memory_block([c.content for c in sources], system_prompt)
        built = client.build_activation(
            [{"role": "system", "content": block}],
            fingerprint=fp,
            path=self.blob(Form.activation, rel),
            adapter=adapter,
            meta={"vault": vault, "user_id": user_id},
        )
        meta = ActivationMeta(
            name=name,
            fingerprint=fp,
            **identity,
            adapter=adapter,
            system_prompt=system_prompt,
            sources=source_signature(sources),
            tokens=built["tokens"],
            bytes=built["bytes"],
            build_s=built["total_s"],
        )
        previous = self._named(Form.activation, vault, user_id, name)
        cube = _new_derived(
            Form.activation,
            rel,
            sources,
            user_id=user_id,
            vault=vault,
            by=by,
            name=name,
            metadata=meta.to_metadata(),
        )
        stored = self._store(_rebuilt(previous, cube), previous, by, "rebuild")
        if previous is not None and previous.content != rel:
            self.drop_blob(previous.content, keep=rel)
        return stored

    def drop_blob(self, rel: str, keep: str | None = None) -> bool:
        """Remove a KV blob no live activation cube points at (caches are rebuilt, not
        restored); True if a file was removed. Anything that is not a KV blob name inside the
        blob folder (`kv/../x`, a symlink pointing out) is left alone and logged."""
        if rel == keep:
            return False
        if not is_blob_name(Form.activation, rel):
            log.warning("not removing %r: not a KV blob name", rel)
            return False
        try:
            path = self.blob(Form.activation, rel)
        except InvalidInput as exc:
            log.warning("not removing %r: %s", rel, exc)
            return False
        for cube in self.derived(Form.activation, vault=None):
            if cube.content == rel:
                return False
        if not (path.is_symlink() or path.is_file()):
            return False
        path.unlink()  # a link (pointing inside the blob folder) goes, never its target
        return True

    def drop_activation(self, cube: MemCube) -> None:
        """After an activation cube is demoted: remove its blob (unless another live cube uses
        it) and evict its cache from the model process this runtime is connected to."""
        self.drop_blob(cube.content)
        client = self.runtime.client
        if client is not None:
            with contextlib.suppress(MemOSError):
                client.evict(ActivationMeta.from_cube(cube).fingerprint)

    def drop_parameter(self, cube: MemCube) -> None:
        """After a parameter cube is demoted: unload its adapter from the model process this
        runtime is connected to (its files stay, for restore and rollback)."""
        client = self.runtime.client
        if client is not None:
            with contextlib.suppress(MemOSError):
                client.unload_adapter(lora_name(cube))

    def check_activation(self, cube: MemCube, client: ModelClient) -> list[MemCube]:
        """The activation's sources as they are now, or `ActivationRefused` saying what
        changed."""
        meta = ActivationMeta.from_cube(cube)
        sources = self._current_sources(cube, meta)
        info = client.info()
        if not info.get("memos"):
            # a plain OpenAI-compatible server (vLLM): the memories go as text, and the
            # server's own prefix cache stands in for the blob
            return sources
        identity = model_identity(info)
        for key in ("model", "revision", "dtype", "template_sha"):
            if getattr(meta, key) != identity[key]:
                raise ActivationRefused(
                    f"activation cube {cube.id} was built for {key}={getattr(meta, key)!r}; "
                    f"the model process has {key}={identity[key]!r}"
                )
        fp = activation_fingerprint(identity, sources, meta.system_prompt, meta.adapter)
        if fp != meta.fingerprint:
            raise ActivationRefused(
                f"activation cube {cube.id} does not match its sources; rebuild it"
            )
        if not self.blob(Form.activation, cube.content).is_file():
            raise ActivationRefused(f"activation blob {cube.content} is missing; rebuild it")
        return sources

    def _current_sources(self, cube: MemCube, meta: ActivationMeta) -> list[MemCube]:
        found = self.catalog.get_many(cube.provenance.derived_from)
        recorded = meta.source_versions
        sources = []
        for cid in cube.provenance.derived_from:
            src = found.get(cid)
            if src is None or not src.is_live():
                state = "erased" if src is None else src.lifecycle.state.value
                raise ActivationRefused(
                    f"activation cube {cube.id} is stale: source {cid} is {state}; rebuild it"
                )
            if cid in recorded and recorded[cid] != src.lifecycle.version:
                raise ActivationRefused(
                    f"activation cube {cube.id} is stale: source {cid} changed "
                    f"(version {recorded[cid]} -> {src.lifecycle.version}); rebuild it"
                )
            sources.append(src)
        return sources

    # parameter memory
    def ensure_adapter(self, cube: MemCube, client: ModelClient) -> str:
        """Load a parameter cube's adapter into the model process; returns its model name."""
        name = lora_name(cube)
        path = self.blob(Form.parameter, cube.content)
        info = client.info()
        meta = ParameterMeta.from_cube(cube)
        if info.get("memos"):
            for key in ("model", "revision"):
                if getattr(meta, key) != info.get(key):
                    raise ModelError(
                        f"parameter cube {cube.id} was trained on {key}={getattr(meta, key)!r}; "
                        f"the model process has {key}={info.get(key)!r}"
                    )
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"adapter files of parameter cube {cube.id} are missing at {path}")
        client.load_adapter(name, path)
        return name

    def load_parameter(
        self, cube_id: str, *, user_id: str | None = None, check: Check | None = None
    ) -> str:
        """Load a live parameter cube's adapter into the model process (started if need be)."""
        cube = self._get(cube_id, user_id)
        _checked(check, [cube])
        self.blob(Form.parameter, self._require(cube, Form.parameter).content)
        return self.ensure_adapter(cube, self.runtime.connect())

    def unload_parameter(
        self, cube_id: str, *, user_id: str | None = None, check: Check | None = None
    ) -> bool:
        """Unload a parameter cube's adapter from the model process; False if it was not
        loaded."""
        cube = self._get(cube_id, user_id)
        _checked(check, [cube])
        if cube.form is not Form.parameter:
            raise InvalidInput(f"cube {cube.id} is {cube.form.value} memory, not parameter")
        return self.runtime.connect().unload_adapter(lora_name(cube))

    def distil(
        self,
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
        readable: Readable | None = None,
        check: Check | None = None,
    ) -> MemCube:
        """Train a LoRA adapter on these plaintext memories (or every live memory of the user
        with `tag` that `readable` keeps) and store it as a parameter cube. With `name`, an
        existing parameter cube of that name gets a new version (earlier adapters stay on disk
        for history and rollback)."""
        from .examples import training_examples

        check_name(user_id, "user_id")
        _check_options(name, None)
        _check_training(steps, lr, rank)
        if cube_ids is None:
            if not tag:
                raise InvalidInput("give the memories to distil (cube ids) or a tag")
            cube_ids = self._tagged(tag, user_id, vault, readable)
            if not cube_ids:
                raise NotFound(f"no live memories of {user_id} tagged {tag!r}")
            name = name or tag
        sources = self._fetch(cube_ids, user_id)
        _checked(check, sources)
        vault = self._valid_sources(sources, vault)[0].scope.vault
        by = by or f"user:{user_id}"
        previous = self._named(Form.parameter, vault, user_id, name)
        cube = _rebuilt(
            previous,
            _new_derived(
                Form.parameter,
                "",
                sources,
                user_id=user_id,
                vault=vault,
                by=by,
                name=name,
                metadata={},
            ),
        )
        rel = lora_blob_name(cube.id, cube.lifecycle.version)
        path = self.blob(Form.parameter, rel)
        cube.content = rel
        examples = training_examples(sources)
        client = self.runtime.connect()
        info = client.info()
        callback, close = _progress(progress, steps, name or "distil")
        try:
            result = client.distil(
                name=lora_name(cube),
                path=path,
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
        cube.metadata = ParameterMeta(
            name=name,
            **{k: info.get(k) for k in ("model", "revision", "dtype")},
            sources=source_signature(sources),
            examples=len(examples),
            steps=steps,
            lr=lr,
            rank=rank,
            seed=seed,
            **{k: result[k] for k in ("loss_start", "loss_end", "seconds", "bytes")},
            trainable_params=result["trainable_params"],
        ).to_metadata()
        return self._store(cube, previous, by, "retrain")

    # generation
    def _use_activation(
        self,
        acube: MemCube,
        client: ModelClient,
        adapter: str | None,
        system_prompt: str | None,
    ) -> tuple[list[MemCube], str | None]:
        """The activation cube's current sources and the system prompt it was built with."""
        sources = self.check_activation(acube, client)
        meta = ActivationMeta.from_cube(acube)
        if (meta.adapter or None) != adapter:
            raise ActivationRefused(
                f"activation cube {acube.id} was computed under adapter "
                f"{meta.adapter!r}; this request uses {adapter!r}"
            )
        if system_prompt is not None and system_prompt != meta.system_prompt:
            raise InvalidInput("system_prompt differs from the one the activation was built with")
        return sources, meta.system_prompt

    def inputs(
        self,
        *,
        user_id: str,
        vault: str | None = None,
        memories: Sequence[str | MemCube] | None = None,
        activation: str | MemCube | None = None,
        parameter: str | MemCube | None = None,
        plan: Any = None,
    ) -> _Inputs:
        """Every cube a generation with these arguments reads (the parameter cube, the
        activation cube and the memories it holds, the memories sent as text, a `plan`'s
        included), as stored, from the catalog alone: no model process is reached, nothing is
        validated yet (`_valid`)."""
        check_name(user_id, "user_id")
        if plan is not None:
            activation, parameter, memories = _with_plan(plan, activation, parameter, memories)
        pcube = self._get(parameter, user_id) if parameter is not None else None
        acube = self._get(activation, user_id) if activation is not None else None
        held: list[MemCube] = []
        if acube is not None:
            found = self.catalog.get_many(acube.provenance.derived_from)
            held = [found[i] for i in acube.provenance.derived_from if i in found]
        plain: list[MemCube] = []
        if memories:
            seen = set(acube.provenance.derived_from) if acube is not None else set()
            plain = [c for c in self._fetch(memories, user_id) if c.id not in seen]
        return _Inputs(pcube, acube, held, plain)

    def _valid(self, got: _Inputs, vault: str | None) -> None:
        """Each input is live memory of its form, with a well-formed blob name."""
        if got.parameter is not None:
            self.blob(Form.parameter, self._require(got.parameter, Form.parameter).content)
        if got.activation is not None:
            self.blob(Form.activation, self._require(got.activation, Form.activation).content)
        if got.plaintext:
            self._valid_sources(got.plaintext, vault)

    def _prepare(
        self,
        prompt: Any,
        *,
        user_id: str,
        vault: str | None,
        memories: Sequence[str | MemCube] | None,
        activation: str | MemCube | None,
        parameter: str | MemCube | None,
        plan: Any,
        system_prompt: str | None,
        check: Check | None,
        skip_texts: Collection[str] = (),
    ) -> _Prepared:
        messages = _normalise(prompt)
        _check_options(None, system_prompt)
        got = self.inputs(
            user_id=user_id,
            vault=vault,
            memories=memories,
            activation=activation,
            parameter=parameter,
            plan=plan,
        )
        if skip_texts:
            got.plaintext = [c for c in got.plaintext if c.content not in skip_texts]
        _checked(check, got.cubes)
        self._valid(got, vault)
        client = self.runtime.connect()
        used = Generation("", None, None, {}, {})
        texts: list[str] = []
        touch: list[str] = []
        act_spec = None
        adapter = None
        if got.parameter is not None:
            adapter = self.ensure_adapter(got.parameter, client)
            used.parameter, used.adapter = got.parameter.id, adapter
            touch.append(got.parameter.id)
        if got.activation is not None:
            acube = got.activation
            sources, system_prompt = self._use_activation(acube, client, adapter, system_prompt)
            texts += [s.content for s in sources]
            used.activation = acube.id
            touch += [acube.id, *(s.id for s in sources)]  # used memories stay hot
            if client.is_memos:
                act_spec = {
                    "blob": str(self.blob(Form.activation, acube.content)),
                    "fingerprint": ActivationMeta.from_cube(acube).fingerprint,
                }
        if got.plaintext:
            texts += [c.content for c in got.plaintext]
            used.plaintext = [c.id for c in got.plaintext]
            touch += used.plaintext
        msgs = memory_messages(texts, messages, system_prompt)
        return _Prepared(client, msgs, adapter, act_spec, used, touch)

    def generate(
        self,
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
        check: Check | None = None,
    ) -> Generation:
        """Answer with the local model. `memories` go in as text; `activation` reuses a stored
        KV cache of its memories (same reply as sending them as text, faster); `parameter`
        loads a LoRA adapter for this request; `plan` (from `mem.scheduler.plan`) supplies all
        three."""
        p = self._prepare(
            prompt,
            user_id=user_id,
            vault=vault,
            memories=memories,
            activation=activation,
            parameter=parameter,
            plan=plan,
            system_prompt=system_prompt,
            check=check,
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
        self.catalog.touch(p.touch, utcnow())
        out = p.used
        out.text, out.finish_reason, out.ttft_s = done.text, done.finish_reason, done.ttft_s
        out.usage, out.timings = done.usage, done.timings
        return out

    def chat_request(
        self,
        prompt: Any,
        *,
        user_id: str,
        vault: str | None = None,
        memories: Sequence[str | MemCube] | None = None,
        activation: str | MemCube | None = None,
        parameter: str | MemCube | None = None,
        plan: Any = None,
        system_prompt: str | None = None,
        skip_texts: Collection[str] = (),
        check: Check | None = None,
    ) -> ChatRequest:
        """What `generate` with these arguments would send, without sending it: the messages
        (memory block first), the model name (the parameter cube's adapter, loaded now, or the
        base model) and `extra_body` naming the activation cube's KV blob, checked against its
        sources now. Any OpenAI-compatible client gets the same reply by sending it. Memories
        to send as text whose content is one of `skip_texts` (turns already in the
        conversation) are left out."""
        if isinstance(skip_texts, str) or not all(isinstance(t, str) for t in skip_texts):
            raise InvalidInput("skip_texts must be a collection of strings")
        p = self._prepare(
            prompt,
            user_id=user_id,
            vault=vault,
            memories=memories,
            activation=activation,
            parameter=parameter,
            plan=plan,
            system_prompt=system_prompt,
            check=check,
            skip_texts=frozenset(skip_texts),
        )
        self.catalog.touch(p.touch, utcnow())
        return ChatRequest(
            model=p.model or p.client.model_name,
            messages=p.messages,
            extra_body={"memos_activation": p.activation} if p.activation else {},
            activation=p.used.activation,
            parameter=p.used.parameter,
            plaintext=p.used.plaintext,
        )

    def stream(self, prompt: Any, **kw: Any) -> Iterator[str]:
        """`generate`, as an iterator of text pieces. The memories are resolved, checked and
        the model process reached now; the text comes as the iterator is read."""
        opts = {k: kw.pop(k) for k in ("max_tokens", "temperature", "stop", "seed") if k in kw}
        p = self._prepare(
            prompt,
            **{
                "vault": None,
                "memories": None,
                "activation": None,
                "parameter": None,
                "plan": None,
                "system_prompt": None,
                "check": None,
                **kw,
            },
        )
        return self._streamed(p, opts)

    def _streamed(self, p: _Prepared, opts: dict[str, Any]) -> Iterator[str]:
        yield from p.client.stream(p.messages, model=p.model, activation=p.activation, **opts)
        self.catalog.touch(p.touch, utcnow())


def _with_plan(
    plan: Any,
    activation: str | MemCube | None,
    parameter: str | MemCube | None,
    memories: Sequence[str | MemCube] | None,
) -> tuple[Any, Any, list[Any]]:
    """The arguments a `plan` (from `mem.scheduler.plan`) fills in."""
    try:
        steps = (plan.activation, plan.parameter, list(plan.plaintext))
    except (AttributeError, TypeError) as exc:
        raise InvalidInput("plan must be a Plan (from mem.scheduler.plan)") from exc
    if isinstance(memories, str | MemCube):
        memories = [memories]
    if memories is not None and not isinstance(memories, Sequence):
        raise InvalidInput("memories must be a list of cube ids or cubes")
    given = list(memories or [])
    return (
        activation or steps[0],
        parameter or steps[1],
        given + [i for i in steps[2] if i not in given],
    )


def _check_options(name: Any, system_prompt: Any) -> None:
    if name is not None:
        check_name(name, "name")
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise InvalidInput("system_prompt must be a string")


def _check_training(steps: Any, lr: Any, rank: Any) -> None:
    def whole(v: Any, lo: int, hi: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    if not whole(steps, 1, 100_000) or not whole(rank, 1, 1024):
        raise InvalidInput("steps (1..100000) and rank (1..1024) must be whole numbers")
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not 0 < lr < 1:
        raise InvalidInput("lr must be a number between 0 and 1")


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


def _normalise(prompt: Any) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidInput("prompt must not be empty")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, dict):
        prompt = [prompt]
    if not isinstance(prompt, Sequence):
        raise InvalidInput("prompt must be a string, a message or a list of messages")
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
class _Inputs:
    """What a generation reads (`ModelMemory.inputs`)."""

    parameter: MemCube | None
    activation: MemCube | None
    held: list[MemCube]  # the memories the activation cube was built from
    plaintext: list[MemCube]  # memories sent as text (those the activation holds left out)

    @property
    def cubes(self) -> list[MemCube]:
        one = [c for c in (self.parameter, self.activation) if c is not None]
        return [*one, *self.held, *self.plaintext]


@dataclass
class _Prepared:
    client: ModelClient
    messages: list[dict[str, Any]]
    model: str | None
    activation: dict[str, Any] | None
    used: Generation
    touch: list[str]
