"""The report's pages: Jinja2 templates (``templates/``) with autoescaping, CSS inlined into each page."""
from __future__ import annotations

import functools
import math
import os
from typing import Any, Dict, Optional

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
MISSING = "—"


def number(value: Optional[float], digits: int = 3) -> str:
    """A metric for a table cell: fixed digits, '—' for a missing or undefined (NaN) value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{float(value):.{digits}f}"


def _rounds_to_zero(value: float, digits: int) -> bool:
    return round(float(value), digits) == 0


def signed(value: Optional[float], digits: int = 3) -> str:
    """A change with its sign; one that rounds to zero is '±0.000' (not a red '-0.000')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if _rounds_to_zero(value, digits):
        return f"±{0:.{digits}f}"
    return f"{float(value):+.{digits}f}"


def trend(value: Optional[float], digits: int = 3) -> str:
    """The CSS class of a change: 'up', 'down' or '' (none, or too small to show)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or _rounds_to_zero(value, digits):
        return ""
    return "up" if value > 0 else "down"


def counted(labels) -> str:
    """Names with their counts, in order of first appearance: ['person', 'dog', 'person'] -> 'person ×2, dog'
    (a street photo's 14 people read as one entry)."""
    counts: Dict[str, int] = {}
    for label in labels:
        counts[str(label)] = counts.get(str(label), 0) + 1
    return ", ".join(name if n == 1 else f"{name} ×{n}" for name, n in counts.items())


@functools.lru_cache(maxsize=1)
def environment():
    import jinja2  # pylint: disable=g-import-not-at-top

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=False, lstrip_blocks=False)
    env.filters.update(number=number, signed=signed, trend=trend, counted=counted)
    return env


def render(template: str, context: Dict[str, Any]) -> str:
    return environment().get_template(template).render(**context)


def write(path: str, template: str, context: Dict[str, Any]) -> str:
    """Renders a page and writes it atomically (a reader never sees half a page)."""
    body = render(template, context)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(body)
    os.replace(partial, path)
    return path
