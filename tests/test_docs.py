"""The documentation holds together: links and images exist, every script has its page, the README
stays short."""

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
DOCS = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
PAGES = [README] + DOCS
README_LIMIT = 12 * 1024

# [text](target), ![alt](target)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# a target broken by a space or line break
SPLIT_LINK = re.compile(r"\]\(\s*[^)\s<\"]+\s+[^)\s\"][^)]*\)")
HTML_SOURCE = re.compile(r"<(?:img|a)\b[^>]*?(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(path):
    """The page without its code blocks and inline code (their brackets are not links)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return INLINE_CODE.sub("", FENCE.sub("", text))


def targets(path):
    text = prose(path)
    return LINK.findall(text) + HTML_SOURCE.findall(text)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    with open(path, encoding="utf-8") as f:
        text = FENCE.sub("", f.read())
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE)}


def model_scripts():
    """Top-level scripts that train a GAN (they define train_step)."""
    found = []
    for path in sorted(glob.glob(os.path.join(REPO, "*.py"))):
        with open(path, encoding="utf-8") as f:
            if re.search(r"^def train_step\(", f.read(), re.MULTILINE):
                found.append(os.path.splitext(os.path.basename(path))[0])
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_and_images_exist(page):
    missing = []
    for target in targets(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part
                    else page)
        if not os.path.exists(resolved):
            missing.append(target)
        elif anchor and resolved.endswith(".md") and anchor.lower() not in anchors(resolved):
            missing.append(f"{target} (no such heading)")
    assert not missing, f"{os.path.relpath(page, REPO)} links to what does not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_no_link_target_is_broken_across_lines(page):
    """A target split by a line break is no link at all, so the check above would never see it."""
    broken = [" ".join(m.group(0).split()) for m in SPLIT_LINK.finditer(prose(page))]
    assert not broken, (f"{os.path.relpath(page, REPO)} has link targets with a break inside: "
                        f"{broken}")


def test_every_script_has_its_page():
    scripts = model_scripts()
    assert len(scripts) >= 7, f"expected the seven model scripts, found {scripts}"
    pages = {os.path.basename(p) for p in DOCS}
    missing = [f"docs/{s}.md" for s in scripts if f"{s}.md" not in pages]
    if os.path.exists(os.path.join(REPO, "evaluate.py")) and "evaluation.md" not in pages:
        missing.append("docs/evaluation.md (evaluate.py)")
    if os.path.exists(os.path.join(REPO, "bench.py")) and "performance.md" not in pages:
        missing.append("docs/performance.md (bench.py)")
    assert not missing, f"pages missing: {missing}"


def test_readme_links_every_page():
    linked = {os.path.normpath(os.path.join(REPO, t.partition("#")[0])) for t in targets(README)}
    unlinked = [os.path.relpath(p, REPO) for p in DOCS if p not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_readme_is_short():
    size = os.path.getsize(README)
    assert size < README_LIMIT, (f"README.md is {size} bytes; keep it under {README_LIMIT} "
                                 "(move details to docs/)")


def test_readme_commands_match_ci():
    """The README's install and test commands are the ones CI (.ci/run) runs."""
    ci = os.path.join(REPO, ".ci", "run")
    if not os.path.exists(ci):
        pytest.skip("no .ci/run")
    with open(ci, encoding="utf-8") as f:
        ci_text = f.read()
    with open(README, encoding="utf-8") as f:
        readme = f.read()
    for command, in_ci in (("pip install -r requirements.txt",
                            r"pip install (-q )?-r requirements\.txt"),
                           ("python -m pytest -q", r"python -m pytest -q\s*$")):
        assert re.search(in_ci, ci_text, re.MULTILINE), f".ci/run does not run {command!r}"
        assert command in readme, f"README.md does not show {command!r}"
