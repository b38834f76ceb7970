"""The book's own Sphinx extension (named in ``_config.yml``; not part of sparsekit's API).

It lives in the package so that every build finds it, whichever folder its ``_config.yml`` is read from.

Author-year bibliography labels
    ``bibtex_reference_style: author_year`` makes ``{cite:p}`` render "(Child et al., 2019)", but the
    bibliography page would still label its entries with pybtex's alpha keys ("[CGRS19]"). The
    formatting style ``author_year`` (``bibtex_default_style``) labels them like the citations that
    link to them: "Child et al., 2019", "Beltagy and Peters, 2020" (two authors), with "a", "b"
    appended when two entries would share a label; entries stay sorted by author, year and title.
    Each entry is marked as an item of the bibliography's list (``role="listitem"``), which docutils'
    deprecated ``doc-biblioentry`` role is not for screen readers.

Launch and repository buttons that follow one setting, ``repository.url``
    sphinx-book-theme draws a Binder or Colab button on every notebook page as soon as
    ``binderhub_url`` or ``colab_url`` is set, and fails with a ``TypeError`` when no repository URL
    goes with them. The book names both services in ``launch_buttons`` once; they are kept, and the
    repository button turned on, only when ``repository.url`` is set (a published copy); otherwise
    (a local build) they are dropped, so no build shows a button that leads nowhere.
"""

from __future__ import annotations

import re
from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle

NAME = "author_year"


def _surname(person) -> str:
    # BibTeX braces protect capitals ("{T}ransformers"); they are not part of the name.
    return re.sub(r"[{}]", "", " ".join(person.prelast_names + person.last_names))


class AuthorYearLabels(BaseLabelStyle):
    """Labels "Surname, year", "Surname and Surname, year" or "Surname et al., year"."""

    def format_labels(self, sorted_entries):
        labels = [self.format_label(entry) for entry in sorted_entries]
        total = Counter(labels)
        seen: Counter = Counter()
        for label in labels:
            if total[label] == 1:
                yield label
            else:
                seen[label] += 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]

    @staticmethod
    def format_label(entry) -> str:
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        year = entry.fields.get("year", "n.d.")
        if not people:
            return f"{entry.key}, {year}"
        if len(people) == 1:
            names = _surname(people[0])
        elif len(people) == 2:
            names = f"{_surname(people[0])} and {_surname(people[1])}"
        else:
            names = f"{_surname(people[0])} et al."
        return f"{names}, {year}"


class AuthorYearStyle(PlainStyle):
    """pybtex's ``plain`` entries, sorted by author, year and title, labelled author-year."""

    default_label_style = NAME


#: Launch services that need the repository URL to build their links.
SERVICES = ("binderhub_url", "jupyterhub_url", "colab_url", "deepnote_url", "jupyterlite_url")


def _follow_repository_url(app, config) -> None:
    options = dict(config.html_theme_options or {})
    has_url = bool(str(options.get("repository_url") or "").strip())
    launch = dict(options.get("launch_buttons") or {})
    if not has_url:
        for key in SERVICES:
            launch.pop(key, None)
    options["launch_buttons"] = launch
    options["use_repository_button"] = has_url
    config.html_theme_options = options


def _bibliography_list_items(app, pagename, templatename, context, doctree) -> None:
    # docutils marks each entry role="doc-biblioentry", a role ARIA 1.3 deprecated, inside a
    # role="list": screen readers (and axe-core's aria-required-children) then find a list with no
    # items. The entries are list items.
    body = context.get("body")
    if body and 'role="doc-biblioentry"' in body:
        context["body"] = body.replace('role="doc-biblioentry"', 'role="listitem"')


def setup(app):
    register_plugin("pybtex.style.labels", NAME, AuthorYearLabels)
    register_plugin("pybtex.style.formatting", NAME, AuthorYearStyle)
    # Before sphinx-book-theme reads the options (builder-inited) and before any page is written.
    app.connect("config-inited", _follow_repository_url, priority=100)
    app.connect("html-page-context", _bibliography_list_items)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
