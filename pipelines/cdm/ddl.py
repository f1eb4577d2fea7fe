"""Render a schema spec to SQL DDL for one dialect, with sqlglot's expression builders.

What differs between dialects is data (``_DIALECTS`` below), not code paths: how primary and foreign
keys can be declared, and whether the engine has secondary indexes at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from pipelines.cdm.spec import Column, Index, Schema, Table
from pipelines.errors import PasserelleError


@dataclass(frozen=True)
class _Dialect:
    sqlglot_name: str
    primary_keys: str  # "inline" (in CREATE TABLE), "alter" (ALTER TABLE ADD CONSTRAINT) or "none"
    foreign_keys: str  # "alter" or "none"
    indexes: bool
    not_enforced: bool = False  # constraints are informational (BigQuery requires NOT ENFORCED)
    why_not: str = ""  # said in the output for whatever the dialect cannot declare


_DIALECTS = {
    # DuckDB cannot add a foreign key by ALTER TABLE, and inline FKs cannot express the cycle
    # concept.domain_id -> domain -> domain.domain_concept_id -> concept; FKs would also make every
    # vocabulary reload order-dependent. Keys are declared inline; FKs are checked by the DQ suite.
    "duckdb": _Dialect(
        "duckdb",
        "inline",
        "none",
        True,
        why_not="DuckDB cannot add foreign keys to existing tables; the DQ checks verify them",
    ),
    "postgresql": _Dialect("postgres", "alter", "alter", True),
    "tsql": _Dialect("tsql", "alter", "alter", True),
    # Snowflake records keys but never enforces them; it has no secondary indexes on standard tables.
    "snowflake": _Dialect(
        "snowflake", "alter", "alter", False, why_not="Snowflake standard tables have no secondary indexes"
    ),
    # BigQuery keys must be NOT ENFORCED; BigQuery has no B-tree indexes.
    "bigquery": _Dialect(
        "bigquery", "alter", "alter", False, not_enforced=True, why_not="BigQuery has no secondary indexes"
    ),
    # Spark SQL tables have no key constraints and no indexes.
    "spark": _Dialect(
        "spark", "none", "none", False, why_not="Spark SQL has neither key constraints nor indexes"
    ),
}

DIALECTS = tuple(_DIALECTS)

# Column names that are reserved words somewhere (note_nlp.offset) are always quoted.
_RESERVED = frozenset({"offset"})

_TYPES = {
    "bigint": exp.DataType.Type.BIGINT,
    "integer": exp.DataType.Type.INT,
    # DOUBLE, not an unconstrained NUMERIC: it keeps fractions in every dialect.
    "float": exp.DataType.Type.DOUBLE,
    "date": exp.DataType.Type.DATE,
    "datetime": exp.DataType.Type.TIMESTAMP,
    "boolean": exp.DataType.Type.BOOLEAN,
    "varchar(max)": exp.DataType.Type.TEXT,
}


_PARTS = ("tables", "primary_keys", "foreign_keys", "indexes")


def render_ddl(
    schema: Schema, dialect: str, *, db_schema: str | None = None, parts: tuple[str, ...] = _PARTS
) -> str:
    """The DDL of ``schema`` in ``dialect`` as one SQL script, a commented section per part."""
    d = _dialect(dialect)
    lines = [f"-- OMOP CDM v{schema.version} for {dialect}, rendered by Passerelle from omop_ddl/"]
    for part in parts:
        lines.append(f"\n-- {part.replace('_', ' ')}")
        if _omitted(d, part):
            lines.append(f"-- none: {d.why_not}")
        elif part == "primary_keys" and d.primary_keys == "inline":
            lines.append("-- declared inline in CREATE TABLE above")
        lines.extend(f"{sql};" for sql in statements(schema, dialect, db_schema=db_schema, parts=(part,)))
    return "\n".join(lines) + "\n"


def statements(
    schema: Schema, dialect: str, *, db_schema: str | None = None, parts: tuple[str, ...] = _PARTS
) -> list[str]:
    """The DDL statements of the chosen parts, in dependency order, one string each."""
    d = _dialect(dialect)
    expressions: list[exp.Expression] = []
    if "tables" in parts:
        inline_pk = d.primary_keys == "inline"
        expressions += [_create_table(t, db_schema, inline_pk=inline_pk) for t in schema.tables]
    if "primary_keys" in parts and d.primary_keys == "alter":
        expressions += [
            _add_primary_key(t, db_schema, d.not_enforced) for t in schema.tables if t.primary_key
        ]
    if "foreign_keys" in parts and d.foreign_keys == "alter":
        expressions += [
            _add_foreign_key(t, c, db_schema, d.not_enforced)
            for t in schema.tables
            for c in t.columns
            if c.references
        ]
    if "indexes" in parts and d.indexes:
        expressions += [_create_index(i, db_schema) for t in schema.tables for i in t.indexes]
    return [e.sql(dialect=d.sqlglot_name) for e in expressions]


def _dialect(name: str) -> _Dialect:
    if name not in _DIALECTS:
        raise PasserelleError(f"unknown dialect {name!r}; choose one of: {', '.join(DIALECTS)}")
    return _DIALECTS[name]


def _omitted(d: _Dialect, part: str) -> bool:
    return {
        "primary_keys": d.primary_keys == "none",
        "foreign_keys": d.foreign_keys == "none",
        "indexes": not d.indexes,
    }.get(part, False)


def _identifier(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=name in _RESERVED)


def _table_ref(name: str, db_schema: str | None) -> exp.Table:
    return exp.Table(this=_identifier(name), db=_identifier(db_schema) if db_schema else None)


def data_type(column: Column) -> exp.DataType:
    if column.type in _TYPES:
        return exp.DataType(this=_TYPES[column.type])
    length = exp.DataTypeParam(this=exp.Literal.number(column.varchar_length))
    return exp.DataType(this=exp.DataType.Type.VARCHAR, expressions=[length])


def _create_table(table: Table, db_schema: str | None, *, inline_pk: bool) -> exp.Create:
    definitions: list[exp.Expression] = []
    for column in table.columns:
        constraints = [exp.ColumnConstraint(kind=exp.NotNullColumnConstraint())] if column.required else []
        definitions.append(
            exp.ColumnDef(this=_identifier(column.name), kind=data_type(column), constraints=constraints)
        )
    if inline_pk and table.primary_key:
        definitions.append(exp.PrimaryKey(expressions=[_identifier(c) for c in table.primary_key]))
    return exp.Create(
        kind="TABLE", this=exp.Schema(this=_table_ref(table.name, db_schema), expressions=definitions)
    )


def _alter_add(table: str, db_schema: str | None, body: exp.Expression) -> exp.Alter:
    return exp.Alter(
        this=_table_ref(table, db_schema), kind="TABLE", actions=[exp.AddConstraint(expressions=[body])]
    )


def _not_enforced(flag: bool) -> list[exp.Expression] | None:
    return [exp.var("NOT ENFORCED")] if flag else None


def _add_primary_key(table: Table, db_schema: str | None, not_enforced: bool) -> exp.Alter:
    body: exp.Expression = exp.PrimaryKey(
        expressions=[_identifier(c) for c in table.primary_key], options=_not_enforced(not_enforced)
    )
    if not not_enforced:  # BigQuery's unenforced primary keys take no name
        body = exp.Constraint(this=_identifier(f"xpk_{table.name}"), expressions=[body])
    return _alter_add(table.name, db_schema, body)


def _add_foreign_key(table: Table, column: Column, db_schema: str | None, not_enforced: bool) -> exp.Alter:
    ref_table, ref_column = column.references
    reference = exp.Reference(
        this=exp.Schema(this=_table_ref(ref_table, db_schema), expressions=[_identifier(ref_column)]),
        options=_not_enforced(not_enforced),
    )
    body = exp.ForeignKey(expressions=[_identifier(column.name)], reference=reference)
    name = _identifier(f"fpk_{table.name}_{column.name}")
    return _alter_add(table.name, db_schema, exp.Constraint(this=name, expressions=[body]))


def _create_index(index: Index, db_schema: str | None) -> exp.Create:
    columns = [exp.Ordered(this=exp.column(_identifier(c)), nulls_first=False) for c in index.columns]
    return exp.Create(
        kind="INDEX",
        this=exp.Index(
            this=_identifier(index.name),
            table=_table_ref(index.table, db_schema),
            params=exp.IndexParameters(columns=columns),
        ),
    )
