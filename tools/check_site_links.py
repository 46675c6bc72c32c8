"""Check the links of a built documentation site: every internal link and anchor resolves.

Run: ``python tools/check_site_links.py site`` after ``mkdocs build``. Reads every ``.html``
file under the site, collects the ids each page defines, and checks every ``href`` and
``src``: a relative or root-relative link must name a file of the site (a directory stands
for its ``index.html``) and, with a ``#fragment``, an id of that page. External links are
checked for syntax only (an ``http``/``https`` URL with a host name, or ``mailto:``): this
runs offline. Prints each broken link and exits 1 if there is any.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d+)?$")
_SKIPPED_SCHEMES = {"javascript", "data"}


class _Page(HTMLParser):
    """The ids a page defines and the links it holds."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            elif (name == "href" and tag in ("a", "link")) or (
                name == "src" and tag in ("img", "script")
            ):
                self.links.append(value)


def _target(site: Path, page: Path, path: str) -> Path:
    """The file a link's path points at, from the page that holds it."""
    if path.startswith("/"):
        joined = PurePosixPath(path.lstrip("/"))
    else:
        joined = PurePosixPath(page.relative_to(site).parent.as_posix()) / path
    parts: list[str] = []
    for part in joined.parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    target = site.joinpath(*parts)
    return target / "index.html" if target.is_dir() or path.endswith("/") else target


def external_problem(url: str) -> str | None:
    """Why an external link is malformed, or ``None`` when its syntax is fine."""
    parts = urlsplit(url)
    if parts.scheme == "mailto":
        return None if "@" in parts.path else "a mailto: link without an address"
    if parts.scheme not in ("http", "https"):
        return f"an unexpected scheme {parts.scheme!r}"
    if not _HOST.match(parts.netloc) or " " in url:
        return "a malformed host or URL"
    return None


def check_site(site: Path) -> list[str]:
    """Every broken link of the built site at ``site``, as ``page: link (why)`` lines."""
    pages: dict[Path, _Page] = {}
    for html in sorted(site.rglob("*.html")):
        parser = _Page()
        parser.feed(html.read_text(encoding="utf-8"))
        pages[html] = parser
    broken: list[str] = []
    for html, page in pages.items():
        where = html.relative_to(site).as_posix()
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme in _SKIPPED_SCHEMES:
                continue
            if parts.scheme or parts.netloc:
                problem = external_problem(link)
                if problem:
                    broken.append(f"{where}: {link} ({problem})")
                continue
            target = _target(site, html, unquote(parts.path)) if parts.path else html
            if not target.is_file():
                broken.append(f"{where}: {link} (no file {target.relative_to(site)})")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html" and fragment not in pages[target].ids:
                broken.append(f"{where}: {link} (no anchor #{fragment} in that page)")
    return broken


def main() -> None:
    site = Path(sys.argv[1] if len(sys.argv) > 1 else "site")
    if not (site / "index.html").is_file():
        sys.exit(f"{site} holds no built site (run mkdocs build first)")
    broken = check_site(site)
    for line in broken:
        print(line)
    pages = len(list(site.rglob("*.html")))
    print(f"checked the links of {pages} pages: {len(broken)} broken")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
