"""MemLoader / MemDumper: the Memory Interchange Protocol (MIP).

A MIP file is one JSON document: a header, then each cube with every version, the
redactions applied to it and its access log. Its JSON Schema is generated from the pydantic
models below (`mip_schema()`, shipped as `schemas/mip-1.schema.json`); a file that fails it
is refused with the failing field named, before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from .cube import MemCube, Scope, State, VersionRecord, new_id, utcnow
from .errors import InvalidInput
from .governance import Action, MemGovernance

if TYPE_CHECKING:
    from .catalog import Catalog
    from .vault import MemVault

MIP_VERSION = "1.0"


class MIPAccess(BaseModel):
    """One audit entry about a cube."""

    at: datetime
    principal: str
    op: str
    outcome: str


class MIPCube(BaseModel):
    """A cube as exported: its current state, every version, and who touched it."""

    cube: MemCube
    versions: list[VersionRecord]
    redactions: list[dict[str, Any]] = Field(default_factory=list)
    access_log: list[MIPAccess] = Field(default_factory=list)


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
    import jsonschema

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != "mip":
        raise InvalidInput(f"{path} is not a MIP file: field format must be 'mip'")
    if data.get("version") != MIP_VERSION:
        raise InvalidInput(
            f"{path}: field version is {data.get('version')!r}; this MemOS reads MIP {MIP_VERSION}"
        )
    validator = jsonschema.Draft202012Validator(mip_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        e = errors[0]
        where = list(e.absolute_path)
        if e.validator == "required":  # name the missing field itself
            where.append(str(e.message).split("'")[1])
        raise InvalidInput(
            f"{path} is not a valid MIP {MIP_VERSION} file: field {_field_path(where)}: {e.message}"
        )
    try:
        return MIPDocument.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidInput(
            f"{path} is not a valid MIP file: field {_field_path(err['loc'])}: {err['msg']}"
        ) from exc


def _rescoped(cube: MemCube, vault: str | None, user_id: str | None) -> MemCube:
    if vault is None and user_id is None:
        return cube
    new = cube.model_copy(deep=True)
    new.scope = Scope(
        vault=vault or cube.scope.vault,
        user_id=user_id or cube.scope.user_id,
        agent_id=cube.scope.agent_id,
        session_id=cube.scope.session_id,
    )
    return new.seal()


class MemDumper:
    """Exports cubes of a catalog to MIP: what `principal` may read (`governance`), with their
    versions and access log."""

    def __init__(self, catalog: Catalog, governance: MemGovernance) -> None:
        self.catalog = catalog
        self.governance = governance

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
        items = [
            MIPCube(
                cube=c,
                versions=catalog.history(c.id),
                redactions=[r.model_dump() for r in c.governance.redactions],
                access_log=[
                    MIPAccess(at=e.at, principal=e.principal, op=e.op, outcome=e.outcome)
                    for e in gov.audit_log(cube_id=c.id)
                ],
            )
            for c in picked
        ]
        filters = {
            "vault": vault,
            "user_id": user_id,
            "tags": list(tags or []),
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        }
        return MIPDocument(exported_by=principal, filters=filters, cubes=items)


class MemLoader:
    """Imports a MIP document into a vault's stores, optionally into a new vault / user scope;
    `governance` checks the importing principal may write each scope."""

    def __init__(self, vault: MemVault, governance: MemGovernance) -> None:
        self.vault = vault
        self.governance = governance

    def load(
        self,
        doc: MIPDocument,
        *,
        principal: str,
        vault: str | None = None,
        user_id: str | None = None,
    ) -> list[MemCube]:
        """Write every cube with its full history. A cube whose id is taken gets a new id and
        keeps the old one in `provenance.derived_from` (lineage)."""
        catalog = self.vault.catalog
        taken = set(catalog.get_many([i.cube.id for i in doc.cubes]))
        written: list[MemCube] = []
        for item in doc.cubes:
            cube = _rescoped(item.cube, vault, user_id)
            versions = [
                v.model_copy(update={"cube": _rescoped(v.cube, vault, user_id)})
                for v in item.versions
            ]
            if cube.id in taken:
                old = cube.id
                cube = cube.model_copy(deep=True, update={"id": new_id()})
                cube.provenance.derived_from = [*cube.provenance.derived_from, old]
                versions = [
                    v.model_copy(
                        update={
                            "cube_id": cube.id,
                            "cube": v.cube.model_copy(update={"id": cube.id}),
                        }
                    )
                    for v in versions
                ]
            self.governance.check_vault(
                principal, cube.scope.vault, Action.write, cube.scope.user_id
            )
            catalog.insert_history(cube, versions)
            written.append(cube)
        self.vault.sync(written)
        return written
