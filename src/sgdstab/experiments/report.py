"""Claims and reports: every claim an experiment makes is checked with its numbers and reported, failed or not.

A :class:`Claim` is machine-readable (``summary.json``: name, passed, detail, numbers) and renders as one line of
``report.md``: ``- **PASSED** — statement: detail`` or ``- **FAILED** — …``. :func:`count_claim` builds the
common kind "m/n items satisfy a bound; largest ratio r".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sgdstab.utils.results import ResultMixin
from sgdstab.utils.text import fmt


@dataclass(frozen=True)
class Claim(ResultMixin):
    """One checked claim. ``statement``: what is claimed; ``detail``: the evidence in words, with its numbers;
    ``numbers``: the same figures, machine-readable."""

    name: str
    statement: str
    passed: bool
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return f"- **{verdict}** — {self.statement}: {self.detail}"


def count_claim(
    name: str,
    statement: str,
    oks: Sequence[bool],
    what: str,
    ratio: Sequence[float] | None = None,
    ratio_name: str = "largest ratio",
    worst: str = "max",
    extra: dict[str, Any] | None = None,
    digits: int = 3,
) -> Claim:
    """A claim "m/n ``what``; largest ratio r", passed when every item is ok (and there is at least one item)."""
    n_ok, n = sum(bool(x) for x in oks), len(oks)
    numbers: dict[str, Any] = {"count": n_ok, "total": n}
    detail = f"{n_ok}/{n} {what}"
    if ratio is not None:
        finite = [r for r in ratio if isinstance(r, int | float) and not math.isnan(r)]
        value = (max(finite) if worst == "max" else min(finite)) if finite else math.nan
        numbers[ratio_name.replace(" ", "_")] = value
        detail += f"; {ratio_name} {fmt(value, digits)}"
    if extra:
        numbers.update(extra)
    if n == 0:
        detail += " (nothing to check)"
    return Claim(name=name, statement=statement, passed=n > 0 and n_ok == n, detail=detail, numbers=numbers)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], digits: int = 4) -> str:
    """``columns``: (key, header). Floats get ``digits`` significant figures; ``|`` in a header or cell is
    escaped so that norms such as ||H||_F do not split the row."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    head = "| " + " | ".join(cell(h) for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(fmt(row.get(k), digits)) for k, _ in columns) + " |" for row in rows]
    return "\n".join([head, sep, *body])


def render_report(
    title: str,
    intro: str,
    claims: Sequence[Claim],
    sections: Sequence[str],
    figures: Sequence[tuple[str, str]],
    footer: str,
) -> str:
    """report.md: title, what was run, the claims (failed ones first in the count line), sections, figures."""
    failed = [c for c in claims if not c.passed]
    verdict = (
        f"**All {len(claims)} claims passed.**"
        if not failed
        else f"**{len(failed)} of {len(claims)} claims FAILED:** {', '.join(c.name for c in failed)}."
    )
    lines = [f"# {title}", "", intro.strip(), "", "## Claims checked", "", verdict, ""]
    lines += [c.markdown() for c in claims]
    for section in sections:
        lines += ["", section.strip()]
    if figures:
        lines += ["", "## Figures", ""]
        for name, caption in figures:
            lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    lines += ["", footer.strip()]
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["Claim", "count_claim", "fmt", "markdown_table", "render_report"]
