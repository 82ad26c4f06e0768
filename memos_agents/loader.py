"""MemLoader / MemDumper: the Memory Interchange Protocol (MIP).

A MIP file is one JSON document: a header, then each cube with every version, the
redactions applied to it, its access log and (activation and parameter cubes) its blobs. Its
JSON Schema is generated from the pydantic models below (`mip_schema()`, shipped as
`schemas/mip-1.schema.json`).

A file is untrusted input. `MemLoader.plan` checks all of it before anything is written, and
a refused file writes nothing (all or nothing per file):

- the schema, NUL and lone surrogates anywhere, content longer than `reader.MAX_TEXT` (add's
  cap), duplicate cube ids, a cube without versions, duplicate version numbers, versions that
  do not end at the cube's current version or that name another cube;
- fingerprints are recomputed: a cube or version whose content does not match its stored
  fingerprint is refused (never resealed);
- an activation or parameter cube's content must be its blob name (`blobs.check_blob_name`,
  `kv/<its fingerprint>.safetensors`, `lora/<its id>/v<n>`), never a path; its blobs are
  written under the importer's blob root at names computed here, every path checked by
  `blobs.blob_path`; an existing KV blob is never overwritten;
- a cube keeps its id only if that id is a fresh random id (`cube.new_id`'s shape) that no
  cube of the catalog has, in any scope; any other id (one that exists, or a deterministic
  one such as a LangGraph store item's, which a later `put` would write to) is replaced by a
  new id, the old one kept in `provenance.derived_from` (lineage; `derived_from` entries that
  name other cubes of the same file follow their new ids);
- `created_by` of the cube and of every version snapshot, and `changed_by` of every version,
  become the importer; the file's original `created_by` is kept in
  `metadata["imported_from"]` (lineage, never ownership);
- the importing vault's redaction policy is applied to the cube and every version (the vault's
  write path, `MemVault.prepare`).

Blobs: `MIPCube.blobs` (optional, so MIP stays 1.0) carries each blob a cube's versions name,
as base64 per file: a KV blob is one file named `""`, a LoRA adapter folder one entry per file
by its relative POSIX name (no `..`, no absolute names). LangGraph store items are not
restored as store items by an import (their deterministic ids are never kept).

The caller checks the importer may write each target scope (`ImportPlan.scopes`) between
`plan` and `write`; `load` does all three.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from .blobs import blob_path, check_blob_name, is_blob_name, kv_name, lora_blob_name
from .cube import (
    ActivationMeta,
    Form,
    MemCube,
    Scope,
    State,
    VersionRecord,
    new_id,
    utcnow,
)
from .errors import InvalidInput
from .governance import Action, MemGovernance
from .reader import MAX_TEXT
from .vault import check_clean

if TYPE_CHECKING:
    from .catalog import Catalog
    from .vault import MemVault

MIP_VERSION = "1.0"
_FRESH_ID = re.compile(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}")  # uuid4().hex
_ID_CHUNK = 500


class MIPAccess(BaseModel):
    """One audit entry about a cube."""

    at: datetime
    principal: str
    op: str
    outcome: str


class MIPBlob(BaseModel):
    """The files of one activation (KV cache) or parameter (LoRA adapter) blob."""

    name: str = Field(description="the blob name in the exporting data dir (a cube's content)")
    files: dict[str, str] = Field(
        description="relative file name -> base64 bytes; a KV blob is one file, named ''"
    )


class MIPCube(BaseModel):
    """A cube as exported: its current state, every version, who touched it, its blobs."""

    cube: MemCube
    versions: list[VersionRecord] = Field(min_length=1)
    redactions: list[dict[str, Any]] = Field(default_factory=list)
    access_log: list[MIPAccess] = Field(default_factory=list)
    blobs: list[MIPBlob] = Field(
        default_factory=list,
        description="activation / parameter cubes: the blobs their versions name (optional)",
    )


class MIPDocument(BaseModel):
    format: Literal["mip"] = "mip"
    version: Literal["1.0"] = MIP_VERSION
    exported_at: datetime = Field(default_factory=utcnow)
    exported_by: str
    filters: dict[str, Any] = Field(default_factory=dict)
    cubes: list[MIPCube]


def mip_schema() -> dict[str, Any]:
    schema = MIPDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://memos-agents.dev/schemas/mip-1.schema.json"
    return schema


def _field_path(path: Sequence[Any]) -> str:
    return ".".join(str(p) for p in path) or "(document)"


def read_mip(path: Path) -> MIPDocument:
    """Parse and validate a MIP file; errors name the offending field."""
    try:  # a NUL or a lone surrogate in the path: ValueError / UnicodeEncodeError
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path!r}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidInput(f"{path} is nested too deeply") from exc
    return parse_mip(data, str(path))


def parse_mip(data: Any, where: str = "MIP document") -> MIPDocument:
    """Validate parsed JSON as a MIP document (schema, then the models)."""
    import jsonschema

    if not isinstance(data, dict) or data.get("format") != "mip":
        raise InvalidInput(f"{where} is not a MIP file: field format must be 'mip'")
    if data.get("version") != MIP_VERSION:
        raise InvalidInput(
            f"{where}: field version is {data.get('version')!r}; this MemOS reads MIP "
            f"{MIP_VERSION}"
        )
    check_clean(data, "field")  # JSON escapes can carry NUL and lone surrogates
    validator = jsonschema.Draft202012Validator(mip_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        e = errors[0]
        at = list(e.absolute_path)
        if e.validator == "required":  # name the missing field itself
            at.append(str(e.message).split("'")[1])
        raise InvalidInput(
            f"{where} is not a valid MIP {MIP_VERSION} file: field {_field_path(at)}: {e.message}"
        )
    try:
        return MIPDocument.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidInput(
            f"{where} is not a valid MIP file: field {_field_path(err['loc'])}: {err['msg']}"
        ) from exc


# export
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _read_blob(root: Path, form: Form, name: str) -> MIPBlob | None:
    """The files of blob `name` under `root` (None if it is not there). Symlinks are not
    followed out of the blob."""
    try:
        path = blob_path(root, form, name)
    except InvalidInput:  # a link out of the blob root: not exported
        return None
    if path.is_symlink():
        return None
    if form is Form.activation:
        return MIPBlob(name=name, files={"": _b64(path.read_bytes())}) if path.is_file() else None
    if not path.is_dir():
        return None
    files = {
        f.relative_to(path).as_posix(): _b64(f.read_bytes())
        for f in sorted(path.rglob("*"))
        if f.is_file() and not f.is_symlink() and f.resolve().is_relative_to(path.resolve())
    }
    return MIPBlob(name=name, files=files)


def _blobs_of(root: Path | None, cube: MemCube, versions: Sequence[VersionRecord]) -> list[MIPBlob]:
    if root is None or cube.form is Form.plaintext:
        return []
    names = dict.fromkeys([*(v.cube.content for v in versions), cube.content])
    found = [_read_blob(root, cube.form, n) for n in names if is_blob_name(cube.form, n)]
    return [b for b in found if b is not None]


class MemDumper:
    """Exports cubes of a catalog to MIP: what `principal` may read (`governance`), with their
    versions, access log and (given the blob root `blobs`) activation and parameter blobs."""

    def __init__(
        self, catalog: Catalog, governance: MemGovernance, blobs: Path | None = None
    ) -> None:
        self.catalog = catalog
        self.governance = governance
        self.blobs = None if blobs is None else Path(blobs)

    def dump(
        self,
        *,
        principal: str,
        vault: str | None = None,
        user_id: str | None = None,
        tags: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        include_deleted: bool = False,
    ) -> MIPDocument:
        catalog = self.catalog
        states = None if include_deleted else [s for s in State if s is not State.deleted]
        cubes: list[MemCube] = []
        while page := catalog.list(
            vault=vault, user_id=user_id, states=states, limit=1000, offset=len(cubes)
        ):
            cubes += page
        wanted = set(tags or ())
        picked = [
            c
            for c in cubes
            if (not wanted or wanted & set(c.organisation.tags))
            and (since is None or c.lifecycle.created_at >= since)
            and (until is None or c.lifecycle.created_at < until)
        ]
        gov = self.governance
        allowed = gov.allowed(principal, Action.read, picked)
        picked = [c for c, ok in zip(picked, allowed, strict=True) if ok]
        items = []
        for c in picked:
            versions = catalog.history(c.id)
            items.append(
                MIPCube(
                    cube=c,
                    versions=versions,
                    redactions=[r.model_dump() for r in c.governance.redactions],
                    access_log=[
                        MIPAccess(at=e.at, principal=e.principal, op=e.op, outcome=e.outcome)
                        for e in gov.audit_log(cube_id=c.id)
                    ],
                    blobs=_blobs_of(self.blobs, c, versions),
                )
            )
        filters = {
            "vault": vault,
            "user_id": user_id,
            "tags": list(tags or []),
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        }
        return MIPDocument(exported_by=principal, filters=filters, cubes=items)


# import
@dataclass
class _Blob:
    """A blob to write: its folder or file under the blob root, and its files' bytes."""

    form: Form
    name: str
    files: dict[str, bytes]


@dataclass
class ImportPlan:
    """A checked file, ready to write: the cubes (new ids, target scope, importer as
    creator, redacted, sealed), their histories and blobs."""

    items: list[tuple[MemCube, list[VersionRecord]]] = field(default_factory=list)
    blobs: dict[str, _Blob] = field(default_factory=dict)

    @property
    def cubes(self) -> list[MemCube]:
        return [c for c, _ in self.items]

    @property
    def scopes(self) -> list[Scope]:
        """The distinct (vault, user) scopes the file writes to."""
        seen = dict.fromkeys((c.scope.vault, c.scope.user_id) for c, _ in self.items)
        return [Scope(vault=v, user_id=u) for v, u in seen]


def _refuse(i: int, cube_id: str, why: str) -> InvalidInput:
    return InvalidInput(f"field cubes.{i} (cube {cube_id!r}): {why}; nothing was imported")


def _check_versions(i: int, item: MIPCube) -> None:
    cube = item.cube
    numbers = [v.version for v in item.versions]
    if not numbers:
        raise _refuse(i, cube.id, "a cube without versions")
    if len(set(numbers)) != len(numbers):
        raise _refuse(i, cube.id, "version numbers given more than once")
    if numbers != sorted(numbers) or numbers[-1] != cube.lifecycle.version:
        raise _refuse(
            i, cube.id, f"versions {numbers} do not end at the cube's version "
            f"{cube.lifecycle.version} (oldest first)"
        )
    for v in item.versions:
        snap = v.cube
        if v.cube_id != cube.id or snap.id != cube.id:
            raise _refuse(i, cube.id, f"version {v.version} belongs to another cube")
        if snap.lifecycle.version != v.version or snap.form is not cube.form:
            raise _refuse(i, cube.id, f"version {v.version} does not match its snapshot")
    last = item.versions[-1].cube
    if last.content != cube.content:
        raise _refuse(i, cube.id, "the current version's content differs from the cube's")


def _check_content(i: int, item: MIPCube) -> None:
    """Fingerprints recomputed (forged content is refused), add's size cap, blob names."""
    cube = item.cube
    for snap in [cube, *(v.cube for v in item.versions)]:
        if not snap.intact:
            raise _refuse(
                i, cube.id, f"version {snap.lifecycle.version} does not match its fingerprint "
                "(altered content)"
            )
        if cube.form is Form.plaintext:
            if len(snap.content) > MAX_TEXT:
                raise _refuse(i, cube.id, f"content is longer than {MAX_TEXT} characters")
            continue
        try:
            check_blob_name(cube.form, snap.content)
        except InvalidInput as exc:
            raise _refuse(i, cube.id, str(exc)) from exc
        if cube.form is Form.activation:
            try:
                fp = ActivationMeta.from_cube(snap).fingerprint or ""
            except ValidationError as exc:
                raise _refuse(i, cube.id, f"metadata is not activation metadata: {exc}") from exc
            if snap.content != f"kv/{fp[:40]}.safetensors":
                raise _refuse(i, cube.id, "content is not the KV blob name of its fingerprint")
        elif not snap.content.startswith(f"lora/{cube.id}/v"):
            raise _refuse(i, cube.id, "content is not a LoRA blob name of this cube")


def _decode(i: int, cube_id: str, blob: MIPBlob, form: Form) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if form is Form.activation and list(blob.files) != [""]:
        raise _refuse(i, cube_id, f"KV blob {blob.name!r} must be one file named ''")
    for rel, data in blob.files.items():
        parts = PurePosixPath(rel).parts
        if form is Form.parameter and (
            not rel or "\\" in rel or rel.startswith("/")
            or any(p in ("", ".", "..") for p in parts) or len(parts) != len(rel.split("/"))
        ):
            raise _refuse(i, cube_id, f"blob file name {rel!r} is not a plain relative name")
        try:
            out[rel] = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _refuse(i, cube_id, f"blob file {rel!r} is not base64") from exc
    return out


class MemLoader:
    """Imports a MIP document into a vault's stores, optionally into a new vault / user scope,
    with activation / parameter blobs written under `blobs` (the data dir's blob root);
    `governance` checks the importing principal may write each scope (`load`)."""

    def __init__(
        self, vault: MemVault, governance: MemGovernance, blobs: Path | None = None
    ) -> None:
        self.vault = vault
        self.governance = governance
        self.blobs = None if blobs is None else Path(blobs)

    def load(
        self,
        doc: MIPDocument,
        *,
        principal: str,
        vault: str | None = None,
        user_id: str | None = None,
    ) -> list[MemCube]:
        """Check the whole file (`plan`), that `principal` may write every scope it names,
        then write it."""
        plan = self.plan(doc, principal=principal, vault=vault, user_id=user_id)
        for scope in plan.scopes:
            self.governance.check_vault(principal, scope.vault, Action.write, scope.user_id)
        return self.write(plan)

    def plan(
        self,
        doc: MIPDocument,
        *,
        principal: str,
        vault: str | None = None,
        user_id: str | None = None,
    ) -> ImportPlan:
        """Check every cube of `doc` and make what will be written; writes nothing.
        InvalidInput names the first problem."""
        check_clean(doc.model_dump(mode="python"), "field")
        ids = [item.cube.id for item in doc.cubes]
        dup = next((x for x in ids if ids.count(x) > 1), None)
        if dup is not None:
            raise InvalidInput(f"cube id {dup!r} is given more than once; nothing was imported")
        for i, item in enumerate(doc.cubes):
            _check_versions(i, item)
            _check_content(i, item)
        taken = self._taken(ids)
        plan = ImportPlan()
        new_ids = {  # lineage inside the file follows its renamed cubes
            x: x if x not in taken and _FRESH_ID.fullmatch(x) else new_id() for x in ids
        }
        for i, item in enumerate(doc.cubes):
            self._plan_one(plan, i, item, new_ids, principal, vault, user_id)
        self.vault.prepare([snap for c, vs in plan.items for snap in [c, *(v.cube for v in vs)]])
        return plan

    def _taken(self, ids: Sequence[str]) -> set[str]:
        """The ids of `ids` any cube of the catalog has, in any scope."""
        catalog = self.vault.catalog
        out: set[str] = set()
        for start in range(0, len(ids), _ID_CHUNK):
            out |= set(catalog.get_many(list(ids[start : start + _ID_CHUNK])))
        return out

    def _plan_one(
        self,
        plan: ImportPlan,
        i: int,
        item: MIPCube,
        new_ids: dict[str, str],
        principal: str,
        vault: str | None,
        user_id: str | None,
    ) -> None:
        old = item.cube
        cube_id = new_ids[old.id]
        scope = Scope(
            vault=vault or old.scope.vault,
            user_id=user_id or old.scope.user_id,
            agent_id=old.scope.agent_id,
            session_id=old.scope.session_id,
        )
        renamed: dict[str, str] = {}  # old blob name -> the name written here

        def adopt(snap: MemCube) -> MemCube:
            new = snap.model_copy(deep=True)
            new.id, new.scope = cube_id, scope
            if snap.form is Form.parameter:
                new.content = renamed.setdefault(
                    snap.content, lora_blob_name(cube_id, int(snap.content.rsplit("/v", 1)[1]))
                )
            elif snap.form is Form.activation:
                new.content = renamed.setdefault(
                    snap.content, kv_name(ActivationMeta.from_cube(snap).fingerprint or "")
                )
            lineage = [new_ids.get(x, x) for x in snap.provenance.derived_from]
            if cube_id != old.id and old.id not in lineage:
                lineage.append(old.id)
            new.provenance.derived_from = lineage
            if snap.provenance.created_by != principal:
                new.metadata["imported_from"] = {"created_by": snap.provenance.created_by}
            new.provenance.created_by = principal
            return new

        cube = adopt(old)
        versions = [
            VersionRecord(
                cube_id=cube_id,
                version=v.version,
                op=v.op,
                changed_by=principal,
                changed_at=v.changed_at,
                cube=adopt(v.cube),
            )
            for v in item.versions
        ]
        self._plan_blobs(plan, i, item, renamed)
        plan.items.append((cube, versions))

    def _plan_blobs(
        self, plan: ImportPlan, i: int, item: MIPCube, renamed: dict[str, str]
    ) -> None:
        form, cube_id = item.cube.form, item.cube.id
        if not item.blobs:
            return
        if self.blobs is None:
            raise _refuse(i, cube_id, "the file carries blobs but no blob root was given")
        for blob in item.blobs:
            if blob.name not in renamed:
                raise _refuse(i, cube_id, f"blob {blob.name!r} is not named by any version")
            name = renamed[blob.name]
            files = _decode(i, cube_id, blob, form)
            target = blob_path(self.blobs, form, name)  # refuses names that escape the root
            for rel in files:
                path = (target / rel).resolve() if rel else target.resolve()
                if not path.is_relative_to(self.blobs.resolve()) or (
                    rel and not path.is_relative_to(target.resolve())
                ):
                    raise _refuse(i, cube_id, f"blob file {rel!r} resolves outside its blob")
            if form is Form.parameter and (target.exists() or target.is_symlink()):
                raise _refuse(i, cube_id, f"blob {name!r} exists in this data dir")
            plan.blobs.setdefault(name, _Blob(form=form, name=name, files=files))

    def write(self, plan: ImportPlan) -> list[MemCube]:
        """Write a checked plan: blobs, then every cube with its history in one catalog
        transaction, then the index and graph. Blobs written are removed again if the catalog
        refuses the file."""
        written: list[Path] = []
        try:
            for blob in plan.blobs.values():
                written += self._write_blob(blob)
            self.vault.catalog.insert_histories(plan.items)
        except BaseException:
            _remove(written)
            raise
        cubes = plan.cubes
        self.vault.sync(cubes)
        return cubes

    def _write_blob(self, blob: _Blob) -> list[Path]:
        """Write one blob; returns what was created (files, then folders). A KV blob already
        present is kept (its name is its fingerprint's)."""
        assert self.blobs is not None
        target = blob_path(self.blobs, blob.form, blob.name)
        made: list[Path] = []
        if blob.form is Form.activation:
            if target.exists() or target.is_symlink():
                return made
            made += _mkdirs(target.parent)
            _write_new(target, blob.files[""])
            return [*made, target]
        made += _mkdirs(target)
        for rel, data in sorted(blob.files.items()):
            path = target / rel
            made += _mkdirs(path.parent)
            if not path.resolve().is_relative_to(target.resolve()):
                raise InvalidInput(f"blob file {rel!r} resolves outside {blob.name}")
            _write_new(path, data)
            made.append(path)
        return made


def _remove(made: list[Path]) -> None:
    """Undo `_write_blob`: files, then the folders it created, innermost first."""
    for path in reversed(made):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
        elif path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()


def _mkdirs(folder: Path) -> list[Path]:
    """Make `folder`; returns the folders created, outermost first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return sorted(missing, key=lambda p: len(p.parts))


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` (never through an existing file or link) with `data`."""
    with path.open("xb") as f:
        f.write(data)
