"""SQL for DQD checks: each check's two counts, batched into one scan per table, in any sqlglot dialect.

Templates (quality/dqd/check_types.yaml) are DuckDB SQL. A check becomes two aggregate expressions
over one scanned table ``t`` (violated count, denominator count); checks that scan the same table are
computed by one query with ``count(*) FILTER (WHERE ...)`` columns, which is what makes the default
suite of ~2,400 checks take about 200 queries instead of ~2,400. Each check also gets a
standalone query in DQD's shape (``/*violatedRowsBegin*/`` marks the query listing violating rows),
reported as its ``queryText`` and used on its own when a batch fails, to tell which check broke it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import sqlglot

from pipelines.quality.catalogue import Check

# plausibleGender(UseDescendants) parameter -> OMOP gender concept (OHDSI Gender vocabulary)
_GENDER_CONCEPT = {"Male": 8507, "Female": 8532}
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RELATIVE = re.compile(r"^(today|current_year)\+(\d+)$")
# a restriction led by an equality on an integer, as concept checks are: `t.column = <id>[ AND ...]`
_LEADING_EQUALITY = re.compile(r"^t\.(\w+) = (-?\d+)(?: AND |$)")
# Checks per query. A check with a subquery (a lookup in another table) is a join for the planner,
# and planning cost grows faster than linearly with the joins of one query (measured on DuckDB 2.0,
# default suite: 30 lookup checks per query took 2.6x as long as 5 per query on a tiny CDM, 1.3x on
# a 2 M-row one); plain predicates batch widely.
PLAIN_CHECKS_PER_QUERY = 150
LOOKUP_CHECKS_PER_QUERY = 5


@dataclass(frozen=True)
class CheckSql:
    """The counts of one check, as pieces that batch together (DuckDB dialect)."""

    check: Check
    scan: str  # FROM target of the batched query, aliased t
    restrict: str | None
    violated_count: str
    denominator_count: str
    counted: str  # the count itself, without filter: count(*), count(DISTINCT t.person_id), ...
    listing: str | None  # SELECT of the violating rows (None for existence checks)
    denominator_query: str

    def standalone(self, dialect: str = "duckdb") -> str:
        """One query returning num_violated_rows, pct_violated_rows, num_denominator_rows (DQD's shape)."""
        denominator = transpile(self.denominator_query, dialect)
        if self.listing is None:
            return denominator
        listing = transpile(self.listing, dialect)
        counted = transpile(f"SELECT {self.counted} AS num_violated_rows FROM x AS t", dialect)
        counted = counted.rsplit(" FROM ", 1)[0]
        return (
            "SELECT v.num_violated_rows,\n"
            "  CASE WHEN d.num_denominator_rows = 0 THEN 0\n"
            "    ELSE 1.0 * v.num_violated_rows / d.num_denominator_rows END AS pct_violated_rows,\n"
            "  d.num_denominator_rows\n"
            f"FROM ({counted}\n  FROM (\n    /*violatedRowsBegin*/\n    {listing}\n    /*violatedRowsEnd*/\n"
            f"  ) AS t) AS v,\n  ({denominator}) AS d"
        )


def render(
    check: Check,
    *,
    cdm_schema: str,
    vocab_schema: str,
    table_schemas: dict[str, str],
    scans: dict[str, str] | None = None,
    batch_scans: dict[str, str] | None = None,
    integer_columns: frozenset[tuple[str, str]] = frozenset(),
    primary_keys: frozenset[tuple[str, str]] = frozenset(),
) -> CheckSql:
    """Fill a check type's templates with the check's table, field, parameters and shared scans.

    ``batch_scans`` replace shared scans of the same name in the batched query (the same rows, computed
    faster); the standalone query keeps ``scans``. ``integer_columns`` are (table, field) pairs the
    database declares integer: cdmDatatype has nothing to look for in them; ``primary_keys`` the
    single-column primary keys it declares, where the batched isPrimaryKey count has nothing to find.
    """
    sql = check.type.sql
    placeholders = _placeholders(check, cdm_schema, vocab_schema, table_schemas)
    values = _Values(placeholders, scans or {})
    batch_values = _Values(placeholders, (scans or {}) | (batch_scans or {}))
    if "exists" in sql:
        column = f"t.{check.field}" if check.field else "*"
        listing = f"SELECT count({column}) AS present FROM {values['home']}.{check.table} AS t"
        return CheckSql(check, f"{values['home']}.{check.table}", None, "0", "1", "count(*)", None, listing)
    violated_template = sql["violated"]
    scan_template = sql.get("scan", "{home}.{table}")
    if check.name == "plausibleTemporalAfter" and values["after_table"] == "person" != check.table:
        violated_template, scan_template = sql["violated_via_person"], "{with_birth}"
    if "violated_in_integer_column" in sql and (check.table, check.field) in integer_columns:
        violated_template = sql["violated_in_integer_column"]
    scan = _squash(scan_template.format_map(values))
    batch_scan = _squash(scan_template.format_map(batch_values))
    restrict = sql["restrict"].format_map(values) if "restrict" in sql else None
    violated = _squash(violated_template.format_map(values))
    batch_violated = violated
    if "batch_violated_in_primary_key" in sql and (check.table, check.field) in primary_keys:
        batch_violated = sql["batch_violated_in_primary_key"]
    denominator = _squash(sql["denominator"].format_map(values)) if "denominator" in sql else None
    count = sql.get("count", "rows")
    counted = {
        "rows": "count(*)",
        "persons": "count(DISTINCT t.person_id)",
        "values": f"count(DISTINCT t.{check.field})",
        "weighted": "sum(t.records)",
    }[count]
    null_value = (
        f" + count(DISTINCT CASE WHEN t.{check.field} IS NULL THEN 1 END)" if count == "values" else ""
    )

    def aggregate(predicate: str | None) -> str:
        conditions = [c for c in (restrict, predicate) if c]
        where = " AND ".join(f"({c})" for c in conditions)
        filtered = f" FILTER (WHERE {where})" if conditions else ""
        if count == "weighted":
            return f"coalesce({counted}{filtered}, 0)"
        return f"{counted}{filtered}{null_value}{filtered if null_value else ''}"

    def batched(predicate: str | None) -> str:
        """``aggregate`` for a batch column: the condition inside a CASE rather than a FILTER clause.

        DuckDB 2.0 pays a fixed cost per FILTER aggregate however few rows it sees: the 150
        plausibleUnitConceptIds checks of the 10 k warehouse took 0.37 s with FILTER, 0.10 s with
        CASE, on the same 22 summary rows (a batch of 50 plain measurement checks 0.26 -> 0.05 s).
        The counts are the same: a CASE without ELSE is NULL, which no count or sum counts.
        """
        conditions = [c for c in (restrict, predicate) if c]
        if not conditions:
            return aggregate(None)
        where = " AND ".join(f"({c})" for c in conditions)
        if count == "weighted":
            return f"coalesce(sum(CASE WHEN {where} THEN t.records END), 0)"
        kept = {"rows": "1", "persons": "t.person_id", "values": f"t.{check.field}"}[count]
        distinct = "" if count == "rows" else "DISTINCT "
        counted_when = f"count({distinct}CASE WHEN {where} THEN {kept} END)"
        if count == "values":  # NULL counts as one more value, as in ``null_value``
            counted_when += f" + count(DISTINCT CASE WHEN {where} AND t.{check.field} IS NULL THEN 1 END)"
        return counted_when

    where_listing = " AND ".join(f"({c})" for c in (restrict, violated) if c)
    where_denominator = " AND ".join(f"({c})" for c in (restrict, denominator) if c)
    return CheckSql(
        check=check,
        scan=batch_scan,
        restrict=restrict,
        violated_count=batched(batch_violated),
        denominator_count=batched(denominator),
        counted=f"coalesce({counted}, 0)" if count == "weighted" else f"{counted}{null_value}",
        listing=f"SELECT t.* FROM {scan} AS t WHERE {where_listing}",
        denominator_query=(
            f"SELECT {aggregate(None) if count == 'weighted' else counted + null_value} "
            "AS num_denominator_rows "
            f"FROM {scan} AS t" + (f" WHERE {where_denominator}" if where_denominator else "")
        ),
    )


def batches(items: list[CheckSql]) -> list[tuple[str, list[CheckSql]]]:
    """Group checks by scanned table into queries (DuckDB dialect): (sql, checks in column order).

    Column 2i is check i's violated count, 2i+1 its denominator. Checks with a ``restrict`` share a
    scan filtered to the union of their restrictions (concept checks touch a few concepts' rows only).
    """
    groups: dict[tuple[str, bool, str], list[CheckSql]] = {}
    for item in items:
        groups.setdefault((item.scan, item.restrict is not None, _kind(item)), []).append(item)
    queries = []
    for (scan, restricted, kind), members in groups.items():
        size = PLAIN_CHECKS_PER_QUERY if kind == "plain" else LOOKUP_CHECKS_PER_QUERY
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            columns = ",\n  ".join(
                f"{m.violated_count} AS v{i}, {m.denominator_count} AS d{i}" for i, m in enumerate(chunk)
            )
            where = ""
            if restricted:
                restrictions = list(dict.fromkeys(m.restrict for m in chunk))
                where = "\nWHERE " + _union(restrictions)
            queries.append((f"SELECT\n  {columns}\nFROM {scan} AS t{where}", chunk))
    return queries


def value_presence(items: list[CheckSql]) -> list[tuple[str, dict[int, list[CheckSql]]]]:
    """Queries telling which values the checks restricted to one value of a column may find.

    Concept checks restrict their scan to one concept (``t.x = <id>``), and most of DQD's ~470 concepts
    are absent from a given CDM: such a check counts 0 of 0, which one query per scan can tell before
    the batches. Each query pays for itself: a batch's cost grows with its columns (DuckDB plans each
    one), and the 10 k warehouse has 23 of the 181 measurement concepts with plausible units.
    Returns (sql, value -> its checks); the query lists the values present (DuckDB dialect).
    """
    groups: dict[tuple[str, str], dict[int, list[CheckSql]]] = {}
    for item in items:
        if item.restrict is not None and (match := _LEADING_EQUALITY.match(item.restrict)):
            groups.setdefault((item.scan, match[1]), {}).setdefault(int(match[2]), []).append(item)
    return [
        (f"SELECT DISTINCT t.{column} FROM {scan} AS t WHERE t.{column} IN ({', '.join(map(str, values))})",
         values)
        for (scan, column), values in groups.items()
    ]  # fmt: skip


def _kind(item: CheckSql) -> str:
    """plain | lookup (has a subquery) | distinct (counts distinct values: its own aggregation strategy,
    which a plain batch would otherwise pay for too)."""
    text = f"{item.violated_count} {item.denominator_count}".upper()
    if "SELECT" in text:
        return "lookup"
    return "distinct" if "DISTINCT" in text else "plain"


@lru_cache(maxsize=8192)
def transpile(sql: str, dialect: str) -> str:
    """``sql`` (DuckDB dialect) in ``dialect``. Cached: the 2,374 checks' queryTexts are made of 3,000
    distinct pieces out of 7,100 (a table's checks share their denominator query); the PostgreSQL
    queryTexts of the default suite took 3.9 CPU s of sqlglot, 2.9 cached."""
    if dialect == "duckdb":
        return sql
    return sqlglot.transpile(sql, read="duckdb", write=dialect)[0]


def _union(restrictions: list[str]) -> str:
    """A filter letting through every row any restriction keeps (each count still applies its own).

    A restriction led by ``t.column = <id>`` is widened to that equality, and the equalities on one
    column become one IN list: a single hash probe per row instead of hundreds of comparisons.
    """
    by_column: dict[str, list[str]] = {}
    others = []
    for r in restrictions:
        if match := _LEADING_EQUALITY.match(r):
            by_column.setdefault(match[1], []).append(match[2])
        else:
            others.append(f"({r})")
    parts = [f"t.{column} IN ({', '.join(ids)})" for column, ids in by_column.items()] + others
    return " OR ".join(parts)


class _Values(dict):
    """A check's placeholders; a shared scan is filled in when a template first names it (most checks
    name none, and filling every scan for each of the 2,374 checks took a third of ``render``)."""

    def __init__(self, placeholders: dict[str, str], scans: dict[str, str]) -> None:
        super().__init__(placeholders)
        self._scans = scans

    def __missing__(self, name: str) -> str:
        if name not in self._scans:
            raise KeyError(name)
        self[name] = _squash(self._scans[name].format_map(self))
        return self[name]


def _placeholders(check: Check, cdm: str, vocab: str, table_schemas: dict[str, str]) -> dict[str, str]:
    p = dict(check.parameters)
    values = {
        "cdm": cdm,
        "vocab": vocab,
        "table": check.table,
        "field": check.field or "",
        "concept_id": check.concept_id or "",
        "concept_name": check.concept_name or "",
        **p,
    }
    # the schema of the checked table itself: vocabulary tables live in the vocabulary schema
    values["home"] = vocab if table_schemas.get(check.table) == "vocab" else cdm
    if "fk_table" in p:
        values["fk_schema"] = vocab if table_schemas.get(p["fk_table"]) == "vocab" else cdm
    if "value" in p:
        values["value"] = _bound(p["value"])
        is_date = p.get("datatype") in ("date", "datetime")
        values["field_value"] = f"CAST(t.{check.field} AS DATE)" if is_date else f"t.{check.field}"
    if "gender" in p:
        values["gender_concept_id"] = str(_GENDER_CONCEPT[p["gender"]])
    if check.name == "plausibleUnitConceptIds":
        units = p.get("units", "")
        values["unit_filter"] = (
            f"t.unit_concept_id NOT IN ({units})" if units else "t.unit_concept_id IS NOT NULL"
        )
    return values


def _bound(value: str) -> str:
    """A plausible-value bound of the catalogue as SQL: ISO date, today+N, current_year+N or a number."""
    if _ISO_DATE.match(value):
        return f"DATE '{value}'"
    if match := _RELATIVE.match(value):
        base = "current_date" if match[1] == "today" else "EXTRACT(YEAR FROM current_date)"
        return f"({base} + {int(match[2])})"
    float(value)  # anything else must be a number; a ValueError names a broken catalogue row
    return value


def _squash(text: str) -> str:
    return " ".join(text.split())
