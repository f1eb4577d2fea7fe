"""Merging date intervals that lie close together: the one algorithm behind periods and eras.

Intervals of one group (a person, or a person and a concept) are sorted by start; an interval joins
the current run when it starts at most ``window_days`` after the latest end seen so far, otherwise it
starts a new run. Set-based (two window functions and a GROUP BY) so DuckDB runs it in parallel over
millions of rows.
"""

from __future__ import annotations


def merged_intervals_sql(
    intervals_sql: str, keys: tuple[str, ...], window_days: int, aggregates: str = ""
) -> str:
    """SQL giving one row per run: ``keys``, ``start_date``, ``end_date``, ``interval_count``.

    ``intervals_sql`` yields ``keys``, ``start_date``, ``end_date`` (end >= start) and whatever
    ``aggregates`` (extra select items over a run, e.g. ``sum(days) AS days``) need.
    """
    group = ", ".join(keys)
    extra = f", {aggregates}" if aggregates else ""
    return f"""
        WITH covered AS (
            SELECT *,
                   max(end_date) OVER (PARTITION BY {group} ORDER BY start_date, end_date
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS covered_until
            FROM ({intervals_sql})
        ),
        numbered AS (
            SELECT *,
                   sum(CASE WHEN covered_until IS NULL OR start_date - covered_until > {window_days}
                            THEN 1 ELSE 0 END)
                       OVER (PARTITION BY {group} ORDER BY start_date, end_date
                             ROWS UNBOUNDED PRECEDING) AS run_number
            FROM covered
        )
        SELECT {group}, min(start_date) AS start_date, max(end_date) AS end_date,
               count(*) AS interval_count{extra}
        FROM numbered
        GROUP BY {group}, run_number
    """
