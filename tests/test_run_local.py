"""`make run` tells a person where the pages are."""

from __future__ import annotations

import pytest

from scripts.run_local import print_examples


def test_make_run_prints_the_pages_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    print_examples("http://127.0.0.1:8000", ["42"], "v7", "token")
    out = capsys.readouterr().out
    assert "try it in a browser:  http://127.0.0.1:8000/ " in out
    assert "http://127.0.0.1:8000/console" in out
