"""The README and the docs pages cannot drift from the CLI or from each other: every
`snakemake` command that README.md or docs/*.md shows is dry-run (`-n`) in a copy of the
workflow, as a user would type it in the repository, and every relative link in them points
to a file that exists (and, for a link to a heading of a markdown page, to that heading)."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, copy_workflow

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def doc_pages() -> list[Path]:
    """README.md, then every page under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def page_commands(page: Path) -> list[str]:
    """Every snakemake command line in one page: in code blocks (fenced or indented, `\\`
    continuations joined) and in inline code spans."""
    text = page.read_text()
    text = re.sub(r"\\\n\s*", " ", text)  # join continued lines
    commands = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("snakemake "):
            commands.append(stripped.split("  #")[0].split(" # ")[0].strip())
        commands += re.findall(r"`(snakemake [^`]+)`", line)
    return commands


README_COMMANDS = sorted(set(page_commands(REPO / "README.md")))
COMMANDS = sorted({c for page in doc_pages() for c in page_commands(page)})


def test_docs_pages_exist():
    names = {p.name for p in doc_pages()}
    for stage in (
        "data",
        "models",
        "quant",
        "weightonly",
        "fat",
        "adjustable",
        "micronet",
        "deploy",
        "evaluate",
        "report",
        "workflow",
        "development",
    ):
        assert f"{stage}.md" in names


def test_readme_shows_the_commands_users_need():
    # the front page shows the default run, a user's config and the cluster
    assert any("--configfile" in c for c in README_COMMANDS)
    assert any("--profile profiles/slurm" in c for c in README_COMMANDS)
    # README and docs together: every kind of command a user needs
    assert any("--configfile" in c and "--profile profiles/slurm" in c for c in COMMANDS)
    assert any(c.startswith("snakemake -n") for c in COMMANDS)
    assert any("--report" in c for c in COMMANDS)
    assert any("--unlock" in c for c in COMMANDS)
    assert len(COMMANDS) >= 6


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (but `-`
    and `_`), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # no headings in code
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(page: Path) -> list[str]:
    """The targets of the page's markdown links and images that are not URLs, outside
    code blocks and code spans."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, flags=re.I)]


def test_every_page_links_back_to_the_readme():
    for page in doc_pages()[1:]:
        assert "../README.md" in relative_links(page), page.name


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    links = relative_links(page)
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no file {target}")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.name}")
    assert not broken, "\n".join(broken)


def test_readme_links_every_docs_page():
    linked = {
        (REPO / link.partition("#")[0]).resolve() for link in relative_links(REPO / "README.md")
    }
    for page in doc_pages()[1:]:
        assert page.resolve() in linked, page.name


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    repo = tmp_path_factory.mktemp("readme")
    copy_workflow(repo)
    # the README's "my.yaml": a user's own settings on top of config.yaml
    (repo / "my.yaml").write_text("models:\n  mine: {arch: tiny_mobilenet, width: 0.5}\n")
    return repo


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_dry_runs(command, checkout):
    args = shlex.split(command)[1:]
    if "--report" in args:
        pytest.skip(
            "needs finished results: run for real (and opened in Chromium) in tests/workflow/test_workflow.py"
        )
    if "--sdm" in args and shutil.which("conda") is None:
        pytest.skip("conda is not installed here")
    if "-n" not in args and "--dry-run" not in args:
        # a list option (--configfile, --until) may precede targets: -n goes first
        args = ["-n", *args]
    proc = subprocess.run(
        [SNAKEMAKE, *args], cwd=checkout, capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{command}\n{out[-3000:]}"
    done = (
        "Nothing to be done",
        "dry-run",
        "workflow is in a good condition",  # --lint
        "Unlocked working directory",
    )  # --unlock
    assert any(d in out for d in done), out[-2000:]
