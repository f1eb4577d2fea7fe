"""Code-system aliases and unit synonyms, read from ``vocab/aliases/*.csv``.

FHIR names a code system by URI (or ``urn:oid:``), openEHR by a terminology id that may carry a
version (``SNOMED-CT``, ``http://snomed.info/sct (20230731)``); OMOP by ``vocabulary_id``. The table
that joins them is data, so a site adds its own systems without touching code.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import polars as pl

from pipelines.errors import PasserelleError
from pipelines.project_files import data_dir

# "http://snomed.info/sct (20230731)", "SNOMED-CT(2023)", "http://loinc.org|2.74", "http://snomed.info/sct/"
_VERSION_SUFFIX = re.compile(r"\s*\([^()]*\)\s*$|\|.*$")


def normalize_system(system: str) -> str:
    """The lookup key of a code-system name: version suffix dropped, no trailing slash, lower case."""
    return _VERSION_SUFFIX.sub("", system.strip()).rstrip("/").lower()


def vocabulary_ids(systems: list[str | None], known_vocabularies: set[str]) -> list[str | None]:
    """OMOP vocabulary_id of each code-system name; None when unknown (the codes then resolve to 0).

    A name that already is a vocabulary_id of the loaded vocabulary maps to itself, so frames may carry
    OMOP ids directly.
    """
    aliases = code_system_aliases()
    by_lower = {v.lower(): v for v in known_vocabularies}
    out = []
    for system in systems:
        if system is None:
            out.append(None)
            continue
        key = normalize_system(system)
        out.append(aliases.get(key) or by_lower.get(key))
    return out


@cache
def code_system_aliases(folder: Path | None = None) -> dict[str, str]:
    """normalized alias -> vocabulary_id, from ``code_systems.csv``."""
    frame = _read(folder, "code_systems.csv", ["alias", "vocabulary_id", "source"])
    return {normalize_system(a): v for a, v in frame.select("alias", "vocabulary_id").iter_rows()}


@cache
def unit_synonyms(folder: Path | None = None) -> pl.DataFrame:
    """unit as written -> UCUM code as OMOP spells it (``unit``, ``ucum_code``); ucum_synonyms.csv."""
    return _read(folder, "ucum_synonyms.csv", ["unit", "ucum_code", "source"]).select("unit", "ucum_code")


@cache
def project_concept_maps(folder: Path | None = None) -> pl.DataFrame:
    """source_to_concept_map rows for code systems OMOP has no vocabulary for (``concept_maps.csv``)."""
    return _read(
        folder,
        "concept_maps.csv",
        ["source_vocabulary_id", "source_code", "target_concept_id", "source_code_description", "source"],
    ).with_columns(pl.col("target_concept_id").cast(pl.Int32))


def _read(folder: Path | None, name: str, columns: list[str]) -> pl.DataFrame:
    path = (folder or data_dir("vocab") / "aliases") / name
    try:
        frame = pl.read_csv(path, infer_schema=False, encoding="utf8")
    except (OSError, pl.exceptions.PolarsError) as error:
        raise PasserelleError(f"{path}: cannot read the alias table ({error})") from error
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PasserelleError(f"{path}: missing column(s) {', '.join(missing)}")
    unsourced = frame.with_row_index("line", offset=2).filter(pl.col("source").fill_null("") == "")
    if unsourced.height:
        raise PasserelleError(
            f"{path}: line {unsourced['line'][0]} does not say where it comes from (source)"
        )
    return frame
