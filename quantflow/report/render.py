"""The summary as HTML: the markdown the summary template renders, converted by
markdown-it-py (CommonMark with tables), every local image embedded as a data URI so that
one file shows its plots anywhere (opened from results/, inside Snakemake's report.html,
or unpacked from report.zip).

    page = html_page(markdown_text, base_dir="results", title="quantflow summary")
    front = html_fragment(markdown_text, base_dir="results")   # no <html>, for the report's
                                                              # landing page

Links to local files (e.g. the confusion matrices) would not resolve inside the report,
so they become plain text naming the file; links with a scheme (https:, javascript:) stay.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

PAGE_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem;
       color: #1f2328; line-height: 1.45; }
"""
STYLE = """
.quantflow { max-width: 100rem; }
.quantflow table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; }
.quantflow th, .quantflow td { border: 1px solid #d0d7de; padding: 0.2rem 0.45rem; }
.quantflow th { background: #f6f8fa; }
.quantflow img { max-width: 100%; height: auto; }
.quantflow code { background: #f6f8fa; padding: 0 0.2rem; border-radius: 3px; }
.quantflow pre { background: #f6f8fa; padding: 0.6rem; overflow-x: auto; }
.quantflow .file-link { text-decoration: underline dotted; }
.quantflow img[alt^="confusion"] { width: 15rem; margin: 0.2rem; vertical-align: top; }
"""


# Inside Snakemake's report: its content pane centres a tall page vertically (cutting off
# its top) and keeps the workflow description narrow; show the comparison from its top, at
# a width its table fits, and without the typography plugin's backticks around code.
FRONT_STYLE = """
div.overflow-auto:has(.quantflow-front) { align-items: flex-start; justify-content: flex-start; }
.max-w-lg:has(.quantflow-front) { max-width: 64rem; }
.quantflow-front code::before, .quantflow-front code::after { content: none; }
"""


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _is_local(target: str) -> bool:
    return bool(target) and ":" not in target.split("/")[0] and not target.startswith("#")


def markdown_to_html(markdown_text: str, base_dir: str | Path) -> str:
    """The markdown as an HTML body fragment: tables rendered, local images (relative to
    `base_dir`) embedded, local file links turned into text. A local image that does not
    exist raises FileNotFoundError: a summary must not show a broken figure."""
    from markdown_it import MarkdownIt

    base_dir = Path(base_dir)
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown_text)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                src = child.attrGet("src") or ""
                if _is_local(src):
                    child.attrSet("src", _data_uri(base_dir / src))
    body = md.renderer.render(tokens, md.options, {})
    return _unlink_local_files(body)


def _unlink_local_files(body: str) -> str:
    """<a href="local/file">text</a> -> <span class="file-link" title="local/file">text</span>."""

    def replace(match):
        href = html.unescape(match.group(1))
        if not _is_local(href):
            return match.group(0)
        return f'<span class="file-link" title="{html.escape(href)}">{match.group(2)}</span>'

    return re.sub(r'<a href="([^"]*)">(.*?)</a>', replace, body, flags=re.S)


def html_fragment(markdown_text: str, base_dir: str | Path) -> str:
    """An HTML fragment (a <div class="quantflow"> with its own <style>) to be placed
    inside another page, e.g. the landing page of Snakemake's report."""
    return (
        f'<div class="quantflow quantflow-front">\n<style>{STYLE}{FRONT_STYLE}</style>\n'
        f"{markdown_to_html(markdown_text, base_dir)}</div>\n"
    )


def html_page(markdown_text: str, base_dir: str | Path, title: str) -> str:
    """A standalone HTML page of the markdown (UTF-8, images embedded)."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{PAGE_STYLE}{STYLE}</style>\n</head>\n"
        f'<body>\n<div class="quantflow">\n{markdown_to_html(markdown_text, base_dir)}'
        "</div>\n</body>\n</html>\n"
    )


def render(template_path: str | Path, **context) -> str:
    """The Jinja2 template at `template_path` rendered with `context` (markdown text)."""
    import jinja2

    template_path = Path(template_path)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_path.parent)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pct"] = lambda v, d=2: "n/a" if v is None else f"{100.0 * v:.{d}f}"
    env.filters["signed"] = lambda v, d=2: "n/a" if v is None else f"{v:+.{d}f}"
    env.filters["num"] = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"
    env.filters["sci"] = lambda v: "n/a" if v is None else f"{v:.3g}"
    env.filters["kib"] = lambda v: f"{v / 1024:.1f}"
    return env.get_template(template_path.name).render(**context)
