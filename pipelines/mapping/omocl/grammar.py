"""OMOCL/v1.0.0 mapping files read into plain dataclasses, with errors that name the file and field.

An OMOCL file maps one archetype: ``spec.openEhrConfig.archetype`` names it, ``mappings`` lists the
OMOP rows it gives. Each field of a row is a list of ``alternatives`` tried in order (``path``,
``code``, ``conceptMap``, ``multiplication``), ``optional`` when the row stands without it.
``Include`` hands the nodes under ``base_path`` to the file of another (cluster) archetype;
``base_path`` on a row type gives one row per matched node. YAML anchors are plain YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.errors import PasserelleError

GRAMMAR = "OMOCL/v1.0.0"
INCLUDE = "Include"
CUSTOM = "CustomMapping"
# OMOCL row types and the CDM table each one fills (OMOCL specification, "type" of a mapping)
ROW_TABLES = {
    "Measurement": "measurement",
    "Observation": "observation",
    "ConditionOccurrence": "condition_occurrence",
    "DrugExposure": "drug_exposure",
    "ProcedureOccurrence": "procedure_occurrence",
    "DeviceExposure": "device_exposure",
    "Specimen": "specimen",
    "Death": "death",
    "Visit": "visit_occurrence",
    "Person": "person",
}
_ROW_KEYS = {"type", "base_path"}
_ALTERNATIVE_KINDS = ("path", "code", "conceptMap", "multiplication")
# libyaml's safe loader where PyYAML was built with it: the same documents, the 27 bundled files
# read in 8 ms instead of 68 (a fixed cost of every openEHR mapping)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class OmoclError(PasserelleError):
    """An OMOCL file that does not follow the grammar."""


@dataclass(frozen=True)
class Alternative:
    kind: str  # one of _ALTERNATIVE_KINDS
    path: str | None = None  # path, conceptMap
    code: int | None = None  # code
    concept_map: tuple[tuple[str, int], ...] = ()  # conceptMap: local code -> concept_id
    factors: tuple[Alternative, ...] = ()  # multiplication: paths whose numbers are multiplied


@dataclass(frozen=True)
class Field:
    name: str
    alternatives: tuple[Alternative, ...]
    optional: bool


@dataclass(frozen=True)
class RowMapping:
    type: str
    fields: tuple[Field, ...] = ()
    base_path: str | None = None
    include: str | None = None  # Include: archetype id of the file applied under base_path
    custom: str | None = None  # CustomMapping: name of an engine extension (not run, counted)

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True)
class OmoclFile:
    path: Path
    name: str
    archetype: str
    mappings: tuple[RowMapping, ...]


def load_file(path: Path) -> OmoclFile:
    """One OMOCL file; OmoclError names the file and the place of the problem."""
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise OmoclError(f"{path}: not readable YAML ({str(error).splitlines()[0]})") from error
    if not isinstance(doc, dict):
        raise OmoclError(f"{path}: an OMOCL file is a mapping with grammar, spec and mappings")
    if str(doc.get("grammar", "")).strip() != GRAMMAR:
        raise OmoclError(f"{path}: grammar must be {GRAMMAR!r}, found {doc.get('grammar')!r}")
    archetype = ((doc.get("spec") or {}).get("openEhrConfig") or {}).get("archetype")
    if not isinstance(archetype, str) or not archetype.strip():
        raise OmoclError(f"{path}: spec.openEhrConfig.archetype is missing")
    rows = doc.get("mappings")
    if not isinstance(rows, list):
        raise OmoclError(f"{path}: mappings must be a list")
    name = str((doc.get("metadata") or {}).get("name") or path.stem).strip()
    return OmoclFile(
        path=path,
        name=name,
        archetype=archetype.strip(),
        mappings=tuple(_row(row, f"{path}: mappings[{i}]") for i, row in enumerate(rows)),
    )


def load_folder(folder: Path) -> list[OmoclFile]:
    """Every ``*.yml``/``*.yaml`` under ``folder`` (sub-folders too, except ones starting with ``_``)."""
    if not folder.is_dir():
        raise OmoclError(f"{folder}: no such folder of OMOCL files")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in (".yml", ".yaml")
        and p.is_file()
        and not any(part.startswith("_") for part in p.relative_to(folder).parts)
    )
    return [load_file(p) for p in files]


def _row(row: object, where: str) -> RowMapping:
    if not isinstance(row, dict) or not isinstance(row.get("type"), str):
        raise OmoclError(f"{where}: a mapping needs a type")
    kind = row["type"].strip()
    base_path = row.get("base_path")
    if base_path is not None and not isinstance(base_path, str):
        raise OmoclError(f"{where}: base_path must be a path")
    if kind == INCLUDE:
        archetype = row.get("archetype_id")
        if not isinstance(base_path, str) or not isinstance(archetype, str):
            raise OmoclError(f"{where}: Include needs base_path and archetype_id")
        return RowMapping(type=kind, base_path=base_path, include=archetype.strip())
    if kind == CUSTOM:
        return RowMapping(type=kind, custom=str(row.get("name", "")))
    if kind not in ROW_TABLES:
        known = ", ".join([*ROW_TABLES, INCLUDE, CUSTOM])
        raise OmoclError(f"{where}: unknown type {kind!r} (known: {known})")
    fields = tuple(
        _field(name, body, f"{where}.{name}") for name, body in row.items() if name not in _ROW_KEYS
    )
    return RowMapping(type=kind, fields=fields, base_path=base_path)


def _field(name: str, body: object, where: str) -> Field:
    if not isinstance(body, dict):
        raise OmoclError(f"{where}: a field is a mapping with alternatives")
    optional = body.get("optional", False)
    if not isinstance(optional, bool):
        raise OmoclError(f"{where}: optional must be true or false")
    listed = body.get("alternatives")
    # an optional field may be declared without alternatives (a placeholder: it never resolves)
    if not (isinstance(listed, list) and listed) and not (optional and listed is None):
        raise OmoclError(f"{where}: a field needs a non-empty list of alternatives")
    alternatives = tuple(_alternative(a, f"{where}.alternatives[{i}]") for i, a in enumerate(listed or ()))
    return Field(name=name, alternatives=alternatives, optional=optional)


def _alternative(body: object, where: str) -> Alternative:
    kinds = [k for k in _ALTERNATIVE_KINDS if isinstance(body, dict) and k in body]
    if len(kinds) != 1:
        raise OmoclError(f"{where}: an alternative is exactly one of {', '.join(_ALTERNATIVE_KINDS)}")
    kind = kinds[0]
    value = body[kind]
    if kind == "path":
        return Alternative(kind, path=_path(value, where))
    if kind == "code":
        return Alternative(kind, code=_concept_id(value, where))
    if kind == "conceptMap":
        if not isinstance(value, dict) or not isinstance(value.get("mapping"), dict):
            raise OmoclError(f"{where}: conceptMap needs a path and a mapping of codes to concept ids")
        pairs = tuple(
            (str(code), _concept_id(cid, f"{where}.{code}")) for code, cid in value["mapping"].items()
        )
        return Alternative(kind, path=_path(value.get("path"), where), concept_map=pairs)
    if not isinstance(value, list) or not value:
        raise OmoclError(f"{where}: multiplication needs a list of path alternatives")
    factors = tuple(_alternative(f, f"{where}.multiplication[{i}]") for i, f in enumerate(value))
    if any(f.kind != "path" for f in factors):
        raise OmoclError(f"{where}: multiplication multiplies paths only")
    return Alternative(kind, factors=factors)


def _path(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OmoclError(f"{where}: path must be a non-empty string")
    return value.strip()


def _concept_id(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise OmoclError(f"{where}: a concept id must be a whole number, found {value!r}")
    return int(value)


def load_catalogue(folders: list[Path]) -> dict[str, tuple[OmoclFile, ...]]:
    """Files by archetype id. A later folder replaces an earlier one's files for the same archetype
    (a site folder overrides the bundled mappings); within one folder every file for it applies."""
    catalogue: dict[str, tuple[OmoclFile, ...]] = {}
    for folder in folders:
        found: dict[str, list[OmoclFile]] = {}
        for file in load_folder(folder):
            found.setdefault(file.archetype, []).append(file)
        catalogue.update({archetype: tuple(files) for archetype, files in found.items()})
    return catalogue
