"""A missing optional library is one line naming the extra to install."""

import pytest

from transformer import cli
from transformer.extras import MissingExtra, require


def test_require_returns_the_module():
    import json

    assert require("json", "plot", "drawing") is json


def test_a_missing_module_names_its_extra():
    with pytest.raises(MissingExtra, match=r"drawing pictures needs no_such_lib_xyz.*pip install -e '\.\[plot\]'"):
        require("no_such_lib_xyz.pyplot", "plot", "drawing pictures")


def test_the_cli_prints_a_missing_extra_as_one_line(monkeypatch, capsys):
    def fail(args):
        require("no_such_lib_xyz", "dist", "training on several processes")

    monkeypatch.setitem(cli.COMMANDS, "score", fail)
    assert cli.main(["score", "--hyps", "a", "--refs", "b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'.[dist]'" in err[0]
