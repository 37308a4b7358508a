"""The test helpers themselves: what counts as CI."""

import pytest

from tests import conftest


@pytest.mark.parametrize("value", ["false", "0", "no", ""])
def test_missing_shared_data_skips_when_ci_is_set_to_false(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception):
        conftest.shared_or_skip("no-such-folder-anywhere")


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", "Yes"])
def test_missing_shared_data_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="MISSING"):
        conftest.shared_or_skip("no-such-folder-anywhere")


@pytest.mark.parametrize("value,expected", [
    ("true", True), ("TRUE", True), (" 1 ", True), ("yes", True),
    ("false", False), ("0", False), ("no", False), ("", False), ("off", False), (None, False),
])
def test_in_ci_reads_the_ci_variable_as_a_boolean(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert conftest.in_ci() is expected


def test_no_test_skips_silently_on_a_missing_module():
    """pytest.importorskip skips quietly even under CI: the sentence-transformers oracle must fail there
    instead (module_or_skip), so a missing oracle cannot pass as a green suite."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    offenders = [str(p.relative_to(root)) for p in root.rglob("test_*.py")
                 if "importorskip(" in p.read_text() and p.name != "test_conftest.py"]
    assert offenders == []


def test_dev_extra_installs_the_sentence_transformers_oracle():
    import pathlib
    import re

    pyproject = (pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    dev = re.search(r"^dev = \[(.*?)\]", pyproject, re.M | re.S)
    assert dev and "sentence-transformers" in dev.group(1)
