"""The one output channel (transformer/console.py): logging configured once, to standard error as it is at each
message; progress as plain lines when standard error is not a terminal (a log file, a pipe)."""

from __future__ import annotations

import logging

from transformer import console


def test_messages_go_to_the_current_stderr_with_warnings_marked(capsys):
    console.configure()
    console.log.info("plain")
    logging.getLogger("transformer.data").warning("a child logger's %s", "warning")
    err = capsys.readouterr().err
    assert err == "plain\nwarning: a child logger's warning\n"


def test_progress_on_a_plain_stream_prints_the_first_every_nth_and_last_update(capsys):
    console.configure()
    with console.Progress("step", total=7, every=3) as progress:
        for _ in range(7):
            progress.update(1, loss="0.5")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["step 1/7 | loss 0.5", "step 3/7 | loss 0.5", "step 6/7 | loss 0.5", "step 7/7 | loss 0.5"]


def test_track_yields_everything_and_reports_about_every_tenth(capsys):
    console.configure()
    assert list(console.track(range(25), "translating")) == list(range(25))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "translating 1/25",
        "translating 2/25",
        "translating 4/25",
        "translating 6/25",
        "translating 8/25",
        "translating 10/25",
        "translating 12/25",
        "translating 14/25",
        "translating 16/25",
        "translating 18/25",
        "translating 20/25",
        "translating 22/25",
        "translating 24/25",
        "translating 25/25",
    ]
    assert all("elapsed" in line for line in lines)
