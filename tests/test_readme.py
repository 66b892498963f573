"""The README's examples run as written, and its command lines are valid for their scripts."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd
import pytest

import main
import plots
import run_all_models
import summary_tuning

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 250  # a guide, not a log: the logs live in benchmarks/<study>/README.md
PARSERS = {"main.py": main.build_parser, "run_all_models.py": run_all_models.build_parser,
           "summary_tuning.py": summary_tuning.build_parser, "plots.py": plots.build_parser}


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def _command_lines() -> list[tuple[str, list[str]]]:
    """(script, argv) of every README shell line that runs one of our scripts with concrete flags."""
    found = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            words = shlex.split(line) if line else []
            scripts = [i for i, w in enumerate(words) if Path(w).name in PARSERS and "python" in words[i - 1]]
            if scripts and "[" not in line:
                i = scripts[0]
                argv = list(words[i + 1:])
                argv = argv[:argv.index("&&")] if "&&" in argv else argv
                found.append((Path(words[i]).name, argv))
    return found


def test_readme_has_the_install_main_job_and_test_commands():
    text = README.read_text()
    assert "pip install -r requirements.txt" in text
    assert re.search(r"^python run_all_models\.py experiments/grid\.yaml$", text, flags=re.M)
    assert "python -m pytest -q" in text
    assert "RESULTS_PLACEHOLDER" not in text


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; at most {README_MAX_LINES}"


# Words of the team's workflow that mean nothing to a user, and commit hashes in prose.
TEAM_VOCABULARY = re.compile(r"\blease|\bowed\b|\bsessions?\b|\bissues? +#?\d+", flags=re.I)
COMMIT_HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b")


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_user_docs_have_no_team_vocabulary_or_commit_hashes(doc):
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        for pattern in (TEAM_VOCABULARY, COMMIT_HASH):
            found = pattern.search(line)
            assert not found, f"{doc.name}:{n}: {found.group(0)!r} in {line.strip()!r}"


@pytest.mark.parametrize("script,argv", _command_lines(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_readme_command_lines_parse(script, argv):
    PARSERS[script]().parse_args(argv)  # a renamed or removed flag exits 2 here


def test_readme_python_example_runs_as_written(real_root, tmp_path, monkeypatch):
    (code,) = [b for b in _blocks("python") if "run_two_stage_ictta_on_scenario(" in b]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR10_ROOT", str(real_root))
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    (csv,) = (tmp_path / "results" / "notebook").glob("results_*.csv")
    df = pd.read_csv(csv)
    assert set(df["stage"]) == {1, 2} and (df["model"] == "simplecnn").all()


STUDY_FILES = sorted([*(ROOT / "benchmarks").rglob("*.md"), *(ROOT / "benchmarks").rglob("*.sh"),
                      *(ROOT / "experiments").glob("*")])


@pytest.mark.parametrize("doc", STUDY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_study_records_and_experiment_files_have_no_team_vocabulary(doc):
    """Records may name commits (where their numbers came from), but not the team's workflow."""
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        found = TEAM_VOCABULARY.search(line)
        assert not found, f"{doc.relative_to(ROOT)}:{n}: {found.group(0)!r} in {line.strip()!r}"


MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
LINKED_DOCS = sorted([README, *(ROOT / "docs").glob("*.md"), *(ROOT / "benchmarks").rglob("README.md"),
                      *(ROOT / "experiments").glob("*.md")])


def _relative_links(doc: Path) -> list[str]:
    return [t for t in MARKDOWN_LINK.findall(doc.read_text()) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_of_the_docs_and_study_records_resolve(doc):
    broken = [t for t in _relative_links(doc) if not (doc.parent / t).exists()]
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"


def test_the_studies_index_lists_every_study_folder():
    index = ROOT / "benchmarks" / "README.md"
    listed = {(index.parent / t).resolve().parent for t in _relative_links(index)}
    studies = {p.parent.resolve() for p in (ROOT / "benchmarks").glob("*/README.md")}
    assert studies <= listed, f"not in benchmarks/README.md: {sorted(p.name for p in studies - listed)}"
