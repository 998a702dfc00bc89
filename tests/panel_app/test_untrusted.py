"""The one helper for untrusted text: escaping, sanitized Markdown, Tabulator-ready frames."""

import pandas as pd
import pytest

from dsagent.panel_app import untrusted

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    '"><script>alert(1)</script>',
    "</textarea><script>alert(1)</script>",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_text_shows_the_characters_and_makes_no_tag(payload):
    shown = untrusted.text(payload)
    assert "<" not in shown and ">" not in shown and '"' not in shown
    import html

    assert html.unescape(shown) == payload


@pytest.mark.parametrize("payload", PAYLOADS + [
    "[click](javascript:alert(1))",
    "![x](x onerror=alert(1))",
    '![x](javascript:alert(1) "t")',
    "[a](JaVaScRiPt:alert(1))",
    "[a](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
])
def test_markdown_never_yields_script_events_or_script_urls(payload):
    tags = _tags(untrusted.markdown(f"before {payload} after"))
    assert not {name for name, _ in tags} & {"script", "svg", "iframe", "object", "embed", "textarea", "style"}
    for name, attributes in tags:
        assert not [a for a in attributes if a.startswith("on")], (name, attributes)
        for attribute in ("href", "src"):
            url = (attributes.get(attribute) or "").strip().lower()
            assert not url.startswith(("javascript:", "data:", "vbscript:")), (name, url)


def _tags(rendered: str) -> list[tuple[str, dict[str, str | None]]]:
    from html.parser import HTMLParser

    found: list[tuple[str, dict[str, str | None]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    Collect().feed(rendered)
    return found


def test_markdown_keeps_formatting_links_and_tables():
    rendered = untrusted.markdown("**bold** [docs](https://example.org)\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert "<strong>bold</strong>" in rendered
    assert 'href="https://example.org"' in rendered and 'rel="noopener noreferrer nofollow"' in rendered
    assert "<table>" in rendered and "<td>1</td>" in rendered


def test_table_escapes_column_and_index_names_not_the_data():
    frame = pd.DataFrame({"<img src=x onerror=alert(1)>": ["<b>x</b>"]}, index=pd.Index([1], name="<svg onload=alert(1)>"))
    shown = untrusted.table(frame)
    assert list(shown.columns) == ["&lt;img src=x onerror=alert(1)&gt;"]
    assert shown.index.name == "&lt;svg onload=alert(1)&gt;"
    assert shown.iloc[0, 0] == "<b>x</b>"  # cells: Tabulator's plaintext formatter escapes them
    assert list(frame.columns) == ["<img src=x onerror=alert(1)>"]  # the caller's frame is untouched


def test_table_titles_are_unique_so_tabulator_can_show_every_column():
    import pandas as pd

    frame = pd.DataFrame([[1, 2, 3]], columns=["id", "id", "<b>"], index=pd.Index(["x"], name="id"))
    shown = untrusted.table(frame)
    assert list(shown.columns) == ["id", "id (2)", "&lt;b&gt;"]
    assert shown.index.names == ["id (index)"]
    assert list(frame.columns) == ["id", "id", "<b>"]  # the caller's frame is left as it was


@pytest.mark.parametrize("source", ["![x](https://elsewhere.example/p.png?d=secret)", "![x](//elsewhere.example/p.png)",
                                    "![x](HTTP://elsewhere.example/p.png)"])
def test_markdown_images_from_another_origin_are_dropped(source):
    assert "elsewhere" not in untrusted.markdown(source)


def test_markdown_images_of_the_dashboard_stay():
    assert 'src="./api/artifacts/3"' in untrusted.markdown("![plot](./api/artifacts/3)")
