"""A self-contained HTML report of a DQD run (no external CSS, scripts or fonts: it opens offline).

What a reader needs first: how many checks passed per Kahn context and category (the viewer's grid),
then the failures and errors, worst first, each with its numbers, threshold, SQL and notes; the
passed and not-applicable checks follow in a compact table per CDM table.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from pipelines.quality.results import CATEGORIES, CONTEXTS, CheckResult, DqdResults

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:72rem;color:#1b1f24}
h1{margin-bottom:.2rem} .meta{color:#57606a;margin-top:0}
table{border-collapse:collapse;width:100%;margin:1rem 0} th,td{border:1px solid #d0d7de;padding:.35rem .5rem;
text-align:left;vertical-align:top;font-size:.92rem} th{background:#f6f8fa}
.num{text-align:right;font-variant-numeric:tabular-nums}
.FAIL{color:#a40e26;font-weight:600} .ERROR{color:#8250df;font-weight:600} .PASS{color:#1a7f37}
.NA{color:#57606a} .fatal{background:#ffebe9;border-radius:3px;padding:0 .3rem;font-size:.8rem}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.6rem .9rem;margin:.7rem 0}
.card h3{margin:.1rem 0 .4rem;font-size:1rem}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;font-size:.8rem}
details summary{cursor:pointer;color:#0969da}
"""


def render_html(results: DqdResults) -> str:
    meta = results.metadata
    overview = results.overview()
    title = f"Data quality: {meta.get('cdmSourceName') or 'CDM'}"
    seconds = (results.ended - results.started).total_seconds()
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p class='meta'>{overview['countTotal']} checks of the OHDSI Data Quality Dashboard "
        f"(v{escape(str(meta.get('dqdVersion', '')))} catalogue) run {results.started:%Y-%m-%d %H:%M:%S} "
        f"in {seconds:.1f} s &middot; CDM {escape(str(meta.get('cdmVersion') or ''))} &middot; vocabulary "
        f"{escape(str(meta.get('vocabularyVersion') or ''))} &middot; source released "
        f"{escape(str(meta.get('sourceReleaseDate') or ''))}</p>",
        _grid(results),
        _failures(results),
        _others(results),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_html_report(results: DqdResults, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "dq_report.html"
    path.write_text(render_html(results), encoding="utf-8")
    return path


def _grid(results: DqdResults) -> str:
    cells = results.grid()
    header = "".join(f"<th>{c}</th>" for c in (*CATEGORIES, "Total"))
    rows = []
    for context in (*CONTEXTS, "Total"):
        tds = []
        for category in (*CATEGORIES, "Total"):
            cell = cells.get((context, category), {"pass": 0, "fail": 0, "not_applicable": 0, "error": 0})
            judged = cell["pass"] + cell["fail"]
            rate = f"{cell['pass'] / judged * 100:.1f}%" if judged else "&ndash;"
            tds.append(
                f"<td class='num'><b>{rate}</b><br><span class='PASS'>{cell['pass']} pass</span> / "
                f"<span class='FAIL'>{cell['fail']} fail</span><br><span class='NA'>{cell['not_applicable']} "
                f"not applicable, {cell['error']} errors</span></td>"
            )
        rows.append(f"<tr><th>{context}</th>{''.join(tds)}</tr>")
    return (
        "<h2>Overview</h2><p>Pass counts include not-applicable checks, fail counts include errors "
        "(as the DQD viewer counts them).</p>"
        f"<table><tr><th></th>{header}</tr>{''.join(rows)}</table>"
    )


def _failures(results: DqdResults) -> str:
    failing = sorted(
        results.failures(),
        key=lambda r: (not r.is_fatal, not r.is_error, -(r.pct_violated_rows or 0), r.check_id),
    )
    if not failing:
        return "<h2>Failed checks</h2><p class='PASS'>No check failed.</p>"
    cards = [f"<h2>Failed checks ({len(failing)})</h2>"]
    for r in failing:
        fatal = " <span class='fatal'>fatal</span>" if r.is_fatal else ""
        numbers = (
            f"<b>{r.num_violated_rows}</b> of {r.num_denominator_rows} "
            f"({(r.pct_violated_rows or 0) * 100:.2f}%)"
            if r.num_violated_rows is not None
            else "no numbers"
        )
        threshold = "any violation fails" if not r.check.threshold else f"threshold {r.check.threshold:g}%"
        details = [f"<p>{escape(r.description)}</p>", f"<p>{numbers} &middot; {threshold}</p>"]
        if r.error:
            details.append(f"<p class='ERROR'>Error: {escape(r.error)}</p>")
        if r.check.notes:
            details.append(f"<p>Notes: {escape(r.check.notes)}</p>")
        details.append(f"<details><summary>SQL</summary><pre>{escape(r.query_text)}</pre></details>")
        cards.append(
            f"<div class='card'><h3><span class='{r.status}'>{r.status}</span>{fatal} "
            f"{escape(r.check.name)} &middot; {escape(_where(r))}</h3>"
            f"<small>{escape(r.check.type.category)} / {escape(r.check.type.subcategory or '-')} / "
            f"{escape(r.check.type.context)} &middot; {escape(r.check_id)}</small>{''.join(details)}</div>"
        )
    return "\n".join(cards)


def _others(results: DqdResults) -> str:
    parts = ["<h2>Passed and not applicable, per table</h2>"]
    for table, rows in sorted(results.by_table().items()):
        rest = [r for r in rows if not (r.failed or r.is_error)]
        if not rest:
            continue
        passed = sum(r.passed for r in rest)
        lines = "".join(
            f"<tr><td class='{'PASS' if r.passed else 'NA'}'>{r.status}</td><td>{escape(r.check.name)}</td>"
            f"<td>{escape(_where(r))}</td><td class='num'>{_count(r.num_violated_rows)}</td>"
            f"<td class='num'>{_count(r.num_denominator_rows)}</td>"
            f"<td>{escape(r.not_applicable_reason or '')}</td></tr>"
            for r in rest
        )
        parts.append(
            f"<details><summary>{escape(table.upper())}: {passed} passed, {len(rest) - passed} not applicable"
            "</summary><table><tr><th>Status</th><th>Check</th><th>Field / concept</th><th>Violated</th>"
            f"<th>Denominator</th><th>Why not applicable</th></tr>{lines}</table></details>"
        )
    return "\n".join(parts)


def _where(r: CheckResult) -> str:
    where = r.table + (f".{r.field}" if r.field else "")
    if r.check.concept_id:
        where += f" = {r.check.concept_id}"
        if r.check.concept_name:
            where += f" ({r.check.concept_name})"
    return where


def _count(value: int | None) -> str:
    return "" if value is None else str(value)
