"""services/monitor_page/: self-contained (works offline) and consistent with itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from services.config import REPO_ROOT

PAGE_DIR = REPO_ROOT / "services" / "monitor_page"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
TEST_IDS = {"events", "freshness", "updated-at", "components", "stages", "errors"}
"""Element ids the browser test and operators' scripts rely on."""


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("src", "href") and value:
                self.links.append(value)


def parsed_index() -> _Collect:
    parser = _Collect()
    parser.feed((PAGE_DIR / "index.html").read_text())
    return parser


def test_every_linked_file_is_beside_the_page() -> None:
    links = parsed_index().links
    local = [link for link in links if not link.startswith("data:")]

    assert local, links
    for link in local:
        assert re.fullmatch(r"[\w.-]+", link), f"{link} is not a file beside the page"
        assert (PAGE_DIR / link).is_file(), link


def test_nothing_is_loaded_from_another_host() -> None:
    for path in PAGE_DIR.iterdir():
        text = path.read_text().replace(SVG_NAMESPACE, "")

        assert not re.search(r"https?://|//[\w-]+\.[\w.-]+/", text), path.name
        assert "@import" not in text and "@font-face" not in text, path.name


def test_the_script_finds_every_element_it_writes_to() -> None:
    script = (PAGE_DIR / "app.js").read_text()
    used = set(re.findall(r'(?:byId|setText|setCount)\("([\w-]+)"', script))
    used |= {
        f"dead-letters-{stage}" for stage in ("clickhouse", "worker")
    }  # built from a template in the script

    ids = parsed_index().ids

    assert used - ids == set()
    assert TEST_IDS - ids == set()


def test_the_page_polls_the_state_api() -> None:
    script = (PAGE_DIR / "app.js").read_text()

    assert 'fetch("api/state"' in script
    assert re.search(r"POLL_MS = 2000;", script)
