"""Every list the dashboard serves is a table: filtered by a search text and field values, paged, and
exportable whole as CSV or JSON. One place for it, so each route only says which rows and which columns.

A page is `{total, offset, limit, items}` (total counts the filtered rows). An export (`format=csv|json`) is
every filtered row, as a download. CSV cells that a spreadsheet would run as a formula (a task id starting
with `=`, `+`, `-`, `@`) are prefixed with `'`: task ids and round names are free text.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query
from fastapi.responses import JSONResponse, Response

FORMULA = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class Paging:
    """The query parameters every table route takes."""

    offset: int = 0
    limit: int = 50
    q: str | None = None
    format: str | None = None


def paging(offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=1000),
           q: str | None = Query(None, max_length=200, description="case-insensitive text to search for"),
           format: str | None = Query(None, pattern="^(csv|json)$",
                                      description="export every matching row as a download")) -> Paging:
    return Paging(offset, limit, q, format)


Page = Annotated[Paging, Depends(paging)]


def matches(row: dict[str, Any], text: str | None, fields: Iterable[str]) -> bool:
    if not text:
        return True
    needle = text.lower()
    return any(needle in str(row.get(f) or "").lower() for f in fields)


def cell(value: Any) -> str:
    """A CSV cell: numbers as they are, structures as JSON, text safe from spreadsheet formulas."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return "'" + text if text.startswith(FORMULA) else text


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "table"


def table(rows: list[dict[str, Any]], page: Paging, columns: list[str], name: str,
          search: Iterable[str] = ("task_id",), extra: dict[str, Any] | None = None,
          keep: Callable[[dict[str, Any]], bool] | None = None) -> Any:
    """The filtered rows as a page (a dict FastAPI serialises), or every one of them as a CSV/JSON download."""
    found = [r for r in rows if matches(r, page.q, search) and (keep is None or keep(r))]
    disposition = {"Content-Disposition": f'attachment; filename="{safe_filename(name)}.{page.format}"'}
    if page.format == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([cell(r.get(c)) for c in columns] for r in found)
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=disposition)
    if page.format == "json":
        return JSONResponse([{c: r.get(c) for c in columns} for r in found], headers=disposition)
    return {"total": len(found), "offset": page.offset, "limit": page.limit, "columns": columns,
            "items": found[page.offset: page.offset + page.limit], **(extra or {})}
