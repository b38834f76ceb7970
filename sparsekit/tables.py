"""Tables for the book's pages: computed rows rendered as Markdown, so they wrap to the page.

A table printed as fixed-width text scrolls sideways once it is wider than the page's content column;
the same rows as a Markdown table become an HTML table that the theme fits to the column (and to a
phone's width).
"""

from __future__ import annotations

from collections.abc import Sequence


def _cell(value: object, spec: str) -> str:
    text = format(value, spec) if spec else str(value)
    # A pipe would end the cell early in Markdown.
    return text.replace("|", "\\|")


def markdown_text(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    formats: Sequence[str] | None = None,
    align: str | None = None,
) -> str:
    """The Markdown source of a table.

    Parameters
    ----------
    headers : sequence of str
        Column titles.
    rows : sequence of sequence
        One sequence of values per row, as many values as ``headers``.
    formats : sequence of str, optional
        A format spec per column (such as ``",d"`` or ``".2%"``); ``""`` leaves a value as ``str``.
    align : str, optional
        One letter per column, ``l``, ``r`` or ``c``; default: right for numbers, left otherwise
        (decided by the first row).

    Returns
    -------
    str
    """
    width = len(headers)
    if width == 0:
        raise ValueError("headers must name at least one column")
    formats = list(formats) if formats is not None else [""] * width
    if len(formats) != width:
        raise ValueError(f"formats must give one spec per column ({width}), got {len(formats)}")
    for k, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"rows[{k}] has {len(row)} values, headers name {width} columns")
    if align is None:
        first = rows[0] if rows else [""] * width
        align = "".join("r" if isinstance(v, int | float) and not isinstance(v, bool) else "l" for v in first)
    if len(align) != width or set(align) - set("lrc"):
        raise ValueError(f"align must be {width} letters from 'l', 'r', 'c', got {align!r}")
    rule = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = [
        "| " + " | ".join(_cell(h, "") for h in headers) + " |",
        "|" + "|".join(rule[a] for a in align) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(v, f) for v, f in zip(row, formats, strict=True)) + " |")
    return "\n".join(lines)


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    formats: Sequence[str] | None = None,
    align: str | None = None,
):
    """A table shown as Markdown in a notebook (and as an HTML table in the book).

    Takes the arguments of :func:`markdown_text`; returns an ``IPython.display.Markdown`` object, so
    ending a cell with it shows the table.

    Examples
    --------
    >>> import sparsekit as sk
    >>> from sparsekit.tables import markdown_text
    >>> rows = [(n, sk.causal().nnz(n)) for n in (4, 8)]
    >>> print(markdown_text(["n", "allowed pairs"], rows, formats=["", ","]))
    | n | allowed pairs |
    |--:|--:|
    | 4 | 10 |
    | 8 | 36 |
    """
    from IPython.display import Markdown

    return Markdown(markdown_text(headers, rows, formats, align))
