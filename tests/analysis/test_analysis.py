"""gltrans_plugin.analysis: training curves from a run's metrics.json that a kill cut off or a
resumed training appended to."""
import json
import logging
import os
import sys

import pytest

from gltrans_plugin.analysis.curves import read_metrics, training_curves

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _row(it, loss, **more):
    return json.dumps({"iteration": it, "lr": 0.1, "total_loss": loss, **more})


def test_a_torn_line_is_skipped_with_a_warning_naming_the_file_and_line(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    lines = [_row(0, 3.0), _row(1, 2.5), _row(2, 2.0)[:17], _row(3, 1.5),
             _row(4, 1.0, **{"Set/mAP": 40.0})]
    (run / "metrics.json").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="gltrans_plugin.analysis.curves"):
        curves = training_curves(str(run))
    assert curves["losses"]["total_loss"] == ([0, 1, 3, 4], [3.0, 2.5, 1.5, 1.0])
    assert curves["eval"]["mAP"] == ([4], [40.0])
    assert f"{run / 'metrics.json'}:3: not a complete JSON row" in caplog.text
    assert "skipped" in caplog.text

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import plot_training

    summary = plot_training.main([str(run), "--output", str(tmp_path / "c.png")])
    assert summary["iterations"] == 4 and os.path.getsize(tmp_path / "c.png") > 0


def test_a_resumed_run_replaces_the_killed_attempts_rows(tmp_path, caplog):
    """Killed at iteration 5 mid-write (the cut-off row then continued by the resumed run on
    the same line), resumed from the checkpoint of iteration 3: one row per iteration, the
    resumed run's; an evaluation row written late (iteration 0) stays."""
    path = tmp_path / "metrics.json"
    first = [_row(i, 10.0 + i) for i in range(5)] + [json.dumps({"iteration": 0, "A/mAP": 5.0})]
    second = [_row(i, 20.0 + i) for i in range(3, 7)]
    path.write_text("\n".join(first) + "\n" + _row(5, 15.0)[:25] + "\n".join(second) + "\n")
    with caplog.at_level(logging.INFO, logger="gltrans_plugin.analysis.curves"):
        rows = read_metrics(str(path))
    assert [(r["iteration"], r.get("total_loss")) for r in rows] == [
        (0, 10.0), (1, 11.0), (2, 12.0), (0, None), (3, 23.0), (4, 24.0), (5, 25.0), (6, 26.0)]
    assert f"{path}:7: not a complete JSON row" in caplog.text and "kept" in caplog.text
    assert f"{path}:7: the training restarted at iteration 3" in caplog.text
    curves = training_curves(str(path))
    assert curves["losses"]["total_loss"][0] == [0, 1, 2, 3, 4, 5, 6]
    assert curves["accuracy"]["A/mAP"] == ([0], [5.0])


def test_a_file_of_no_json_rows_is_an_error_naming_it(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("not json\n")
    with pytest.raises(ValueError, match=f"{path}:1 is not a JSON object"):
        read_metrics(str(path))
