"""The README's promises that a file can check: every file it links or names is in the checkout.

CI runs on a fresh clone, so a figure or results file that was written locally but never
committed (e.g. one a .gitignore pattern swallowed) fails here rather than showing a broken image
on the project page."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _expand(path: str) -> list[str]:
    """`a_{x,y}_b` -> a_x_b, a_y_b (the README's shorthand for sibling files)."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in _expand(path[: m.start()] + alt + path[m.end() :])]


def referenced_files() -> list[str]:
    links = re.findall(r"\]\(([^)#\s]+)\)", README)  # markdown links and images
    named = re.findall(r"`((?:examples|tests|agents|textgym|\.ci)/[^`\s]+\.[A-Za-z]+)`", README)  # `dir/file.ext`
    paths = [p for p in links if "://" not in p and not p.startswith("mailto:")] + named
    return sorted({q for p in paths for q in _expand(p)})


def test_readme_names_files():
    assert any(p.endswith(".png") for p in referenced_files()), "the pattern no longer finds the README's figures"


def test_every_file_the_readme_links_or_names_exists():
    missing = [p for p in referenced_files() if not (REPO / p).is_file()]
    assert not missing, f"README.md refers to files that are not in the checkout (commit them, or fix the README): {missing}"
