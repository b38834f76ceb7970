"""The book's Sphinx extension: author-year bibliography labels, buttons that follow repository.url."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pybtex = pytest.importorskip("pybtex")  # installed with jupyter-book (sphinxcontrib-bibtex)

from pybtex.database import Entry, Person  # noqa: E402

from sparsekit import _sphinx_book as book  # noqa: E402


def entry(key: str, year: str, *authors: str) -> Entry:
    e = Entry("article", fields={"year": year, "title": key})
    e.key = key
    for name in authors:
        e.add_person(Person(name), "author")
    return e


def test_labels_read_like_author_year_citations():
    entries = [
        entry("a", "2019", "Child, Rewon", "Gray, Scott", "Radford, Alec"),
        entry("b", "2020", "Beltagy, Iz", "Peters, Matthew E."),
        entry("c", "2021", "{T}ay, Yi"),
        entry("d", "1990", "van Rossum, Guido"),
    ]
    labels = list(book.AuthorYearLabels().format_labels(entries))
    assert labels == ["Child et al., 2019", "Beltagy and Peters, 2020", "Tay, 2021", "van Rossum, 1990"]


def test_equal_labels_get_letters():
    entries = [
        entry("a", "2020", "Zaheer, M", "Guruganesh, G", "Dubey, K"),
        entry("b", "2020", "Zaheer, M", "X, Y", "Z, W"),
    ]
    assert list(book.AuthorYearLabels().format_labels(entries)) == [
        "Zaheer et al., 2020a",
        "Zaheer et al., 2020b",
    ]


def _config(url: str):
    launch = {"binderhub_url": "https://mybinder.org", "colab_url": "https://colab.research.google.com"}
    return SimpleNamespace(html_theme_options={"repository_url": url, "launch_buttons": dict(launch)})


def test_launch_buttons_only_with_a_repository_url():
    unset = _config("")
    book._follow_repository_url(None, unset)
    assert not {"binderhub_url", "colab_url"} & set(unset.html_theme_options["launch_buttons"])
    assert unset.html_theme_options["use_repository_button"] is False

    published = _config("https://github.com/example/sparsekit")
    book._follow_repository_url(None, published)
    assert published.html_theme_options["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert published.html_theme_options["use_repository_button"] is True


def test_bibliography_entries_become_list_items():
    context = {"body": '<div role="list"><div class="citation" role="doc-biblioentry">x</div></div>'}
    book._bibliography_list_items(None, "bibliography", "page.html", context, None)
    assert 'role="listitem"' in context["body"] and "doc-biblioentry" not in context["body"]
