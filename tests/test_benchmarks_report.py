"""benchmarks/RESULTS.md is generated from benchmarks/results/*.json and cannot drift from them; a malformed
result file is refused with a message naming the file and the problem."""

import json
import pathlib
import shutil

import pytest

from benchmarks import report

RESULTS = pathlib.Path(report.RESULTS_DIR)


def test_committed_results_md_is_the_render_of_the_result_files():
    assert report.OUTPUT.read_text() == report.render(RESULTS), (
        "benchmarks/RESULTS.md differs from its result files: run `python -m benchmarks report`"
    )


def test_check_mode_agrees(capsys):
    assert report.main(["--check"]) == 0


def test_every_benchmark_with_a_renderer_has_a_result_file():
    kinds = {json.loads(path.read_text())["kind"] for path in RESULTS.glob("*.json")}
    assert set(report.RENDERERS) <= kinds


@pytest.fixture
def results_copy(tmp_path):
    target = tmp_path / "results"
    shutil.copytree(RESULTS, target)
    return target


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("date"), "step.json: missing the required key 'date'"),
        (lambda d: d.update(date="30 Nov 2026"), "step.json: 'date' must be YYYY-MM-DD, got '30 Nov 2026'"),
        (lambda d: d.update(order="2"), "step.json: 'order' must be a whole number, got '2'"),
        (lambda d: d.update(source="remembered"), "step.json: 'source' must be one of"),
        (lambda d: d.update(kind="steps"), "step.json: unknown kind 'steps'"),
        (lambda d: d.pop("result"), "step.json: a 'step' result file needs 'result'"),
        (
            lambda d: d["result"]["results"][0].pop("median_s"),
            "step.json: cannot render its 'step' figures: missing field 'median_s'",
        ),
        (lambda d: d.update(notes="one note"), "step.json: 'notes' must be a list of strings"),
    ],
)
def test_a_malformed_result_file_is_refused_with_a_clear_message(results_copy, change, message):
    _edit(results_copy / "step.json", change)
    with pytest.raises(report.ReportError) as error:
        report.render(results_copy)
    assert message in str(error.value)


def test_a_bad_table_and_invalid_json_are_refused(results_copy, capsys):
    _edit(results_copy / "lm_long.json", lambda d: d["tables"][0]["rows"].append(["1", "2"]))
    with pytest.raises(
        report.ReportError, match="lm_long.json: cannot render .* every row must be a list of 4 strings"
    ):
        report.render(results_copy)
    (results_copy / "step.json").write_text('{"title": "step",')
    output = results_copy.parent / "RESULTS.md"
    assert report.main(["--results", str(results_copy), "--output", str(output)]) == 2
    assert "benchmarks report: " in capsys.readouterr().err
    assert not output.exists()


def test_two_sections_cannot_share_a_place(results_copy):
    order = json.loads((results_copy / "step.json").read_text())["order"]
    _edit(results_copy / "decode.json", lambda d: d.update(order=order))
    with pytest.raises(report.ReportError, match=f"order {order} is also"):
        report.render(results_copy)


def test_check_mode_reports_a_stale_file(results_copy, tmp_path):
    stale = tmp_path / "RESULTS.md"
    stale.write_text(report.render(results_copy) + "an edit by hand\n")
    assert report.main(["--results", str(results_copy), "--output", str(stale), "--check"]) == 1
