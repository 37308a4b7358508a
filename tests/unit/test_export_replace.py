"""`export --out`: only a previous export is replaced, one export per --out at a time, and a kill at
any step of a replacement leaves the old or the new export at --out (issue 27, item 1)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adaretrieve import AdaError
from adaretrieve.cli.main import app
from adaretrieve.errors import describe, io_reason
from adaretrieve.modeling import Encoder
from adaretrieve.modeling.export import EXPORT_MARKER, REPLACE_STEPS, export_size, try_lock

ROOT = Path(__file__).resolve().parents[2]
EXPORT = """
import sys
from adaretrieve.modeling import export as E
model, size, out, kill_at, exchange = sys.argv[1:6]
if exchange == "0":
    E._exchange = lambda a, b: False
if kill_at != "none":
    E.replace_hook = lambda step: E.os._exit(9) if step == kill_at else None
E.export_size(model, size, out, overwrite=True, verify=False)
"""


def _export(model: Path, size: str, out: Path, kill_at: str = "none", exchange: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", EXPORT, str(model), size, str(out), kill_at, "1" if exchange else "0"],
                          env=env, capture_output=True, text=True, **kw)


def _size_at(out: Path) -> str:
    """The size of the export at ``out``, after checking it loads (adaretrieve reads its own exports)."""
    enc = Encoder(out, device="cpu")
    assert str(enc.full_size) == json.loads((out / EXPORT_MARKER).read_text())["size"]
    return str(enc.full_size)


def _cli(*args: str):
    return CliRunner().invoke(app, ["export", "-q", *args])


def test_overwrite_never_deletes_a_folder_that_is_not_an_export(tiny_model, tmp_path, monkeypatch):
    a = tmp_path / "a"
    (a / "b").mkdir(parents=True)
    (a / "precious.txt").write_text("precious")
    (a / "b" / "mine.txt").write_text("mine")
    monkeypatch.chdir(a / "b")
    r = _cli("--model", str(tiny_model), "--size", "2x16", "--out", "..", "--overwrite")
    assert r.exit_code == 2 and "not a folder written by `adaretrieve export`" in r.output and "Traceback" not in r.output, r.output
    assert (a / "precious.txt").read_text() == "precious" and (a / "b" / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in a.iterdir()) == ["b", "precious.txt"]


def test_overwrite_refuses_an_index_and_the_working_directory(tiny_model, tmp_path, monkeypatch):
    ix = tmp_path / "ix"
    r = CliRunner().invoke(app, ["index", "-q", "--model", str(tiny_model), "--corpus", str(_corpus(tmp_path)),
                                 "--shortlist", "1x8", "--out", str(ix)])
    assert r.exit_code == 0, r.output
    before = sorted(str(p) for p in ix.rglob("*"))
    r = _cli("--model", str(tiny_model), "--size", "2x16", "--out", str(ix), "--overwrite")
    assert r.exit_code == 2 and "is an adaretrieve index" in r.output, r.output
    assert sorted(str(p) for p in ix.rglob("*")) == before
    exp = tmp_path / "exp"
    assert _cli("--model", str(tiny_model), "--size", "2x16", "--out", str(exp)).exit_code == 0
    monkeypatch.chdir(exp)
    r = _cli("--model", str(tiny_model), "--size", "2x16", "--out", ".", "--overwrite")
    assert r.exit_code == 2 and "working directory" in r.output and "Traceback" not in r.output, r.output
    assert _size_at(exp) == "2x16"


def _corpus(d: Path) -> Path:
    from tests.conftest import make_corpus

    return make_corpus(d / "corpus.jsonl", n=20)


def test_a_previous_export_is_replaced_and_nothing_is_left_beside_it(tiny_model, tmp_path):
    out = tmp_path / "exp"
    export_size(tiny_model, "2x16", out, verify=False)
    export_size(tiny_model, "4x32", out, overwrite=True, verify=False)
    assert _size_at(out) == "4x32"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".exp.export.lock", "exp"]
    with pytest.raises(AdaError, match="--overwrite"):
        export_size(tiny_model, "2x16", out, verify=False)


def test_a_second_export_to_one_out_is_refused_while_the_first_runs(tiny_model, tmp_path):
    out = tmp_path / "exp"
    fd = try_lock(tmp_path / ".exp.export.lock")  # what a running export holds
    try:
        with pytest.raises(AdaError, match="another export is writing"):
            export_size(tiny_model, "2x16", out, verify=False)
    finally:
        os.close(fd)
    assert not out.exists() and not list(tmp_path.glob(".exp.export-*tmp"))
    export_size(tiny_model, "2x16", out, verify=False)
    assert _size_at(out) == "2x16"


@pytest.mark.parametrize("exchange, step", [(True, s) for s in ("written", "exchanged")]
                         + [(False, s) for s in ("written", "moved_aside", "renamed")])
def test_a_kill_at_any_step_of_a_replacement_leaves_the_old_or_the_new_export(tiny_model, tmp_path, exchange, step):
    assert step in REPLACE_STEPS
    out = tmp_path / "exp"
    assert _export(tiny_model, "2x16", out).returncode == 0
    assert _export(tiny_model, "4x32", out, kill_at=step, exchange=exchange).returncode == 9
    if step == "moved_aside":  # nothing at --out for the instant between the two renames: the next export moves it back
        assert not out.exists() and list(tmp_path.glob(".exp.export-old-*"))
        p = _export(tiny_model, "9x99", out)  # refused (no such size) after it restored the old export
        assert p.returncode != 0
    assert _size_at(out) in ("2x16", "4x32")
    assert _export(tiny_model, "4x8", out, exchange=exchange).returncode == 0
    assert _size_at(out) == "4x8"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".exp.export.lock", "exp"]


def _fsize_limit(n: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))


def test_a_file_size_limit_is_one_line_and_keeps_the_old_export(tiny_model, tmp_path):
    out = tmp_path / "exp"
    assert _export(tiny_model, "2x16", out).returncode == 0
    code = ("import sys; from adaretrieve.cli.main import main; sys.argv = ['adaretrieve', 'export', '-q', '--model', "
            f"{str(tiny_model)!r}, '--size', '4x32', '--out', {str(out)!r}, '--overwrite', '--no-verify']; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=_fsize_limit(20_000),
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"error: {out}: the export could not be written (") and "ulimit -f" in p.stderr, p.stderr
    assert _size_at(out) == "2x16" and not list(tmp_path.glob(".exp.export-*tmp"))


def test_errno_less_write_errors_are_one_line():
    class SafetensorError(Exception):
        pass

    assert "ulimit -f" in io_reason(SafetensorError("Error while serializing: I/O error: File too large (os error 27)"))
    assert "38400 bytes requested, 25568 written" in describe(OSError("38400 requested and 25568 written"))
    assert describe(OSError("something else")) is None and io_reason(ValueError("x")) is None


def test_a_complete_export_with_stdout_on_a_full_device_says_it_is_complete(tiny_model, tmp_path):
    out = tmp_path / "exp"
    code = ("import sys; from adaretrieve.cli.main import main; sys.argv = ['adaretrieve', 'export', '-q', '--model', "
            f"{str(tiny_model)!r}, '--size', '2x16', '--out', {str(out)!r}, '--no-verify']; main()")
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-c", code], stdout=full, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert f"the export to {out} is complete, but its summary could not be written to stdout" in p.stderr, p.stderr
    assert _size_at(out) == "2x16"
