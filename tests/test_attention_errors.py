"""bench/attention_errors.py: errors split into "the digit never found" and "found, misread", on hand-made
layouts with known answers, and end to end on classifier and RAM checkpoints, whose final error must
equal the harness's own evaluation of the same images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import attention_errors, checkpoints, evaluate
from models.classifier import ClassifierConfig, GlimpseClassifier
from models.ram import RamConfig, RecurrentAttentionModel


def test_each_error_is_put_down_to_where_the_last_glimpse_was():
    """Four images, two glimpses, digits with their top-left corner at (10, 20): the box's centre is
    (24.5, 34.5) in 1-based pixels and it spans 14 px each way."""
    digit_xy = np.array([[10, 20]] * 4, dtype=float)
    on, off = (24.5, 34.5), (24.5 + 14.5, 34.5)  # the centre, and half a pixel past the box's right edge
    centres = np.array([[off, on], [off, on], [on, off], [on, (24.5 + 14, 34.5 - 14)]], dtype=float)
    labels = np.array([1, 2, 3, 4])
    pred = np.array([[0, 1], [0, 0], [3, 0], [4, 4]])  # right on, wrong on, wrong off, right on (corner)
    r = attention_errors.decompose(pred, labels, centres, digit_xy)
    assert r["error"] == 0.5 and r["errors"] == 2
    assert [p["error"] for p in r["per_step"]] == [0.5, 0.5]
    assert [p["on_digit"] for p in r["per_step"]] == [0.5, 0.75]
    assert r["per_step"][1]["mean_distance_px"] == pytest.approx((0 + 0 + 14.5 + 14 * 2 ** 0.5) / 4)
    assert (r["last_on_digit"], r["ever_on_digit"]) == (0.75, 1.0)
    assert r["error_when_last_on_digit"] == pytest.approx(1 / 3) and r["error_when_last_off_digit"] == 1.0
    assert (r["errors_off_digit"], r["errors_on_digit"]) == (0.5, 0.5)


def test_no_errors_and_no_glimpse_off_the_digit_leave_those_shares_empty():
    r = attention_errors.decompose(np.array([[5]]), np.array([5]), np.array([[[24.5, 34.5]]]), np.array([[10.0, 20]]))
    assert r["errors"] == 0 and r["errors_off_digit"] is None and r["error_when_last_off_digit"] is None


def test_what_each_step_reads_and_misreads_that_were_read_right_before():
    """Two images, three glimpses on the digit, 5 x 5 grids: each step's medians of the window's span,
    stride, sigma, sigma per stride, intensity and movement; image 0 was right after glimpse 1 and
    misread at the end, image 1 misread throughout."""
    centre = (24.5, 34.5)
    centres = np.array([[centre, (centre[0] + 3, centre[1] + 4), (centre[0] + 3, centre[1] + 4)],
                        [centre, centre, (centre[0] + 1, centre[1])]], dtype=float)
    windows = {"delta": np.array([[4.0, 2, 1], [6, 2, 3]]), "sigma2": np.array([[4.0, 1, 1], [16, 1, 9]]),
               "gamma": np.array([[1.0, 2, 3], [3, 2, 1]])}
    r = attention_errors.decompose(np.array([[7, 1, 1], [2, 2, 2]]), np.array([7, 3]), centres,
                                   np.array([[10.0, 20]] * 2), windows, read_n=5)
    steps = r["per_step"]
    assert [p["stride_px"] for p in steps] == [5, 2, 2] and [p["span_px"] for p in steps] == [20, 8, 8]
    assert [p["sigma_px"] for p in steps] == [3, 1, 2] and [p["gamma"] for p in steps] == [2, 2, 2]
    assert [p["sigma_per_stride"] for p in steps] == pytest.approx([(0.5 + 4 / 6) / 2, 0.5, 1])
    assert [p["moved_px"] for p in steps] == [None, 2.5, 0.5]
    assert r["errors"] == 2 and r["errors_on_digit"] == 1 and r["misread_right_earlier"] == 0.5
    assert "50.00% of the misread digits had been read right after an earlier glimpse" in \
        attention_errors.format_result({**r, "checkpoint": "c", "model": "classifier", "dataset": "d",
                                        "split": "valid", "data_seed": 0})


def _checkpoint(tmp_path, kind, model, dataset="cluttered60"):
    torch.manual_seed(0)
    path = tmp_path / f"{kind}.pt"
    checkpoints.save(path, {"format": "glimpse-train-1", "task": {"task": kind, "dataset": dataset, "seed": 0,
                                                                  "model": model.config.to_dict()},
                            "model": model.state_dict(), "epoch": 3})
    return path


def tiny_checkpoint(tmp_path, kind: str):
    """A checkpoint of an untrained three-glimpse classifier or RAM on cluttered60."""
    torch.manual_seed(0)
    if kind == "classifier":
        model = GlimpseClassifier(ClassifierConfig(height=60, width=60, glimpses=3, read_n=4, hidden=16))
    else:
        model = RecurrentAttentionModel(RamConfig(height=60, width=60, glimpses=3, patch=6, scales=2,
                                                  glimpse_hidden=16, location_hidden=8, glimpse_size=16, hidden=16))
    return _checkpoint(tmp_path, kind, model)


@pytest.mark.parametrize("kind", ["classifier", "ram"])
def test_the_final_error_is_the_harness_s_own_on_the_same_images(kind, tmp_path, mnist_data):
    path = tiny_checkpoint(tmp_path, kind)
    r = attention_errors.analyse(str(path), "valid", limit=40)
    assert (r["model"], r["dataset"], r["images"], r["glimpses"], r["epoch"]) == (kind, "cluttered60", 40, 3, 3)
    built = evaluate.rebuild(path, limit=40)
    wrong = 0
    with torch.no_grad():
        for x, y in built.task.eval_batches("valid", 40):
            wrong += int((built.model.eval()(x, keep_windows=False).logits[:, -1].argmax(-1) != y).sum())
    assert r["error"] == pytest.approx(wrong / 40)
    assert all(0 <= p["on_digit"] <= 1 and p["mean_distance_px"] >= 0 for p in r["per_step"])
    # the soft windows' stride and span, in pixels; RAM's patches are fixed
    assert all((p["stride_px"] > 0 and p["span_px"] == pytest.approx(p["stride_px"] * 3, rel=0.2)) if kind ==
               "classifier" else "stride_px" not in p for p in r["per_step"])
    text = attention_errors.format_result(r)
    extra = r["misread_right_earlier"] is not None
    assert f"{kind} on cluttered60 valid (seed 0), 40 images" in text and len(text.splitlines()) == 2 + 3 + 2 + extra


def test_a_checkpoint_of_another_model_or_a_bad_limit_is_refused_in_one_line(tmp_path, capsys, mnist_data):
    from models.draw import DRAW, DRAWConfig

    path = _checkpoint(tmp_path, "draw", DRAW(DRAWConfig(height=28, width=28, steps=2, enc_hidden=8, dec_hidden=8,
                                                         z_size=2)), dataset="binarized")
    assert attention_errors.main([str(path)]) == 2
    assert "a draw checkpoint; this analysis takes the glimpse classifier or RAM" in capsys.readouterr().err
    assert attention_errors.main([str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        attention_errors.main([str(path), "--limit", "0"])
    assert e.value.code == 2 and "--limit" in capsys.readouterr().err


def test_several_checkpoints_go_into_one_json_study_with_its_command(tmp_path, capsys, mnist_data):
    from bench import records

    clf = _checkpoint(tmp_path, "classifier",
                      GlimpseClassifier(ClassifierConfig(height=60, width=60, glimpses=2, read_n=4, hidden=8)))
    ram = _checkpoint(tmp_path, "ram", RecurrentAttentionModel(RamConfig(
        height=60, width=60, glimpses=2, patch=6, scales=2, glimpse_hidden=8, location_hidden=4, glimpse_size=8,
        hidden=8)))
    out = tmp_path / "study" / "errors.json"
    argv = [str(clf), str(ram), "--limit", "20", "--json", str(out)]
    assert attention_errors.main(argv) == 0
    study = records.read(out)  # a run record, like every file under results/studies
    assert study["suite"] == "attention-errors" and study["status"] == "complete"
    assert study["command"] == ["python", "-m", "bench.attention_errors", *argv]
    assert [r["model"] for r in study["results"]] == ["classifier", "ram"]
    assert all(r["images"] == 20 for r in study["results"]) and study["machine"]["threads"] == 1
    errors = [m for m in study["metrics"] if m["name"] == "valid_error"]
    assert [m["value"] for m in errors] == [r["error"] for r in study["results"]]
    assert capsys.readouterr().out.count("20 images, error") == 2
