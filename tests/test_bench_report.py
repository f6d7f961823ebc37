"""`bench report` on fixture records: the HTML parses, embeds every figure, and the PNGs exist."""

from __future__ import annotations

import io
from html.parser import HTMLParser

import numpy as np

from bench import records
from bench.cli import main
from fixtures.bench_records import make_record


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])


def fixture_records(root):
    runs = root / "runs" / "m"
    records.write(make_record(sha="a" * 40, seeds=(0, 1, 2)), runs / "a.json")
    r = make_record(sha="b" * 40, started="2026-02-01T00:00:00Z", train_speed=(1200, 1150, 1250), nll=90.0)
    r["artifacts"] = "b.npz"
    r["suite"] = "table2"  # the NLL plot and table leave the quick suite's smoke runs out
    records.write(r, runs / "b.json")
    g = np.random.default_rng(0)
    t = 5
    np.savez(runs / "b.npz", **{
        "draw-s0/samples": g.integers(0, 255, (16, 3, 28, 28), dtype=np.uint8),
        "clf-s0/paths/images": g.integers(0, 255, (4, 60, 60), dtype=np.uint8),
        "clf-s0/paths/labels": np.arange(4), "clf-s0/paths/predictions": np.zeros((4, t), int),
        "clf-s0/paths/gx": g.uniform(10, 50, (4, t)).astype(np.float32),
        "clf-s0/paths/gy": g.uniform(10, 50, (4, t)).astype(np.float32),
        "clf-s0/paths/delta": np.ones((4, t), np.float32), "clf-s0/paths/sigma2": np.ones((4, t), np.float32),
        "clf-s0/paths/read_n": np.array(12)})
    return root / "runs"


def test_report_writes_html_and_pngs(tmp_path):
    src = fixture_records(tmp_path)
    out = tmp_path / "report"
    assert main(["report", "--records", str(src), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    parser = Collect()
    parser.feed(page)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["error_vs_glimpses.png", "glimpses_clf-s0.png", "learning_curves.png", "nll_vs_table2.png",
                    "samples_draw-s0.png", "throughput_history.png"]
    assert len(parser.imgs) == len(pngs) and all(s.startswith("data:image/png;base64,") for s in parser.imgs)
    import matplotlib.image as mpimg
    import base64

    for s in parser.imgs:  # every embedded image decodes as a PNG
        assert mpimg.imread(io.BytesIO(base64.b64decode(s.split(",", 1)[1])), format="png").ndim == 3
    assert "80.97" in page and "DRAW without attention" in page  # Table 2 beside ours
    assert "aaaaaaaa" in page and "bbbbbbbb" in page


def test_nll_rows_take_each_model_from_its_most_trained_record_and_mark_what_is_not_a_result(tmp_path):
    from bench import report

    def draw_record(suite, nll, images, started, curve):
        r = make_record(nll=nll, started=started)
        r["suite"] = suite
        r["jobs"] = {"draw-s0": {"status": "complete", "kind": "draw", "seed": 0, "images_seen": images}}
        r["curves"] = {"draw-s0": [{"epoch": e + 1, "images_seen": 100 * (e + 1), "valid_nll_elbo": v}
                                   for e, v in enumerate(curve)]}
        for m in r["metrics"]:
            m["params"]["dataset"] = "binarized"
        return r

    long = draw_record("table2", 90.0, 5000, "2026-01-01T00:00:00Z", [170.0, 120.0, 95.0])
    later = draw_record("table2", 99.0, 1000, "2026-02-01T00:00:00Z", [170.0, 120.0, 100.0])
    smoke = draw_record("quick", 80.0, 9000, "2026-03-01T00:00:00Z", [170.0, 120.0, 80.0])
    rows = report.nll_rows([(tmp_path / "long.json", long), (tmp_path / "later.json", later),
                            (tmp_path / "smoke.json", smoke)])
    folder = tmp_path.name
    assert [(r["record"], r["nll_elbo"], r["nll_iwae"], r["flag"]) for r in rows] == \
        [(f"{folder}/long.json", 90.0, 88.0, None)]
    # records of one name in two folders are two records: the more trained one's bounds, whichever comes last
    rows = report.nll_rows([(tmp_path / "long" / "run.json", long), (tmp_path / "gpu" / "run.json", later)])
    assert [(r["record"], r["nll_elbo"]) for r in rows] == [("long/run.json", 90.0)]
    relapsed = draw_record("table2", 95.0, 9000, "2026-01-01T00:00:00Z", [170.0, 120.0, 95.0, 150.0])
    stuck = draw_record("table2", 200.0, 9000, "2026-01-01T00:00:00Z", [210.0, 205.0])
    assert report.nll_rows([(tmp_path / "r.json", relapsed)])[0]["flag"] == "relapsed at epoch 4"
    assert report.nll_rows([(tmp_path / "s.json", stuck)])[0]["flag"] == "never left the starting plateau"
    assert "not a result: never left the starting plateau" in report._nll_table([(tmp_path / "s.json", stuck)])


def test_learning_curves_of_records_named_alike_in_two_folders_are_both_drawn(tmp_path, monkeypatch):
    from bench import report

    drawn = {}
    monkeypatch.setattr(report, "_save", lambda fig, out, name, figures: drawn.update(
        {name: [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]}))
    recs = [(tmp_path / "long" / "run.json", make_record()), (tmp_path / "gpu" / "run.json", make_record())]
    report.plot_curves(recs, tmp_path, [])
    assert sorted(drawn["learning_curves.png"]) == ["gpu/run: clf-s0", "gpu/run: draw-s0", "long/run: clf-s0",
                                                    "long/run: draw-s0"]


def test_report_without_records_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", "--records", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "holds no run records" in capsys.readouterr().err


def test_long_runs_are_drawn_beside_the_papers_figures(tmp_path, monkeypatch):
    from bench import report

    rec = make_record()
    rec["curves"] = {
        "classifier-cluttered100-T8-s0": [{"epoch": e, "images_seen": 50000 * e, "valid_error": 0.2 / e}
                                          for e in range(1, 6)],
        "draw-binarized-attn-T64-s0": [{"epoch": e, "images_seen": 50000 * e, "valid_nll_elbo": 90.0 - e}
                                       for e in range(1, 4)],
        "classifier-cluttered60-T8-s0": [{"epoch": e, "images_seen": 50000 * e, "valid_error": 0.1}
                                         for e in range(1, 4)],  # not a Table 1 model: no panel takes it
    }
    drawn = {}

    def plot(self, x, y, **kw):
        drawn[kw["label"]] = list(y)

    import matplotlib.axes

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    figures = []
    report.plot_curves_vs_paper([(tmp_path / "long.json", rec)], tmp_path, figures)
    assert [name for name, _ in figures] == ["curves_vs_paper.png"] and (tmp_path / "curves_vs_paper.png").exists()
    assert drawn == {"long: classifier-cluttered100-T8-s0": [20.0, 10.0, 20 / 3, 5.0, 4.0],  # in percent
                     "long: draw-binarized-attn-T64-s0": [89.0, 88.0, 87.0]}
    # a unit being extended from a finished run (whose decay the extension went back over) draws that run too
    finished = [{"epoch": e, "images_seen": 50000 * e, "valid_nll_elbo": 80.0 - e} for e in range(1, 4)]
    rec["jobs"] = {"draw-binarized-attn-T64-s0": {"earlier": [{"info": {"epochs": 2}, "curve": finished[:2]}],
                                                  "extending_from": {"info": {"epochs": 3}, "curve": finished}}}
    drawn.clear()
    report.plot_curves_vs_paper([(tmp_path / "long.json", rec)], tmp_path, figures)
    assert drawn["long: draw-binarized-attn-T64-s0 (finished, 2 epochs)"] == [79.0, 78.0]
    assert drawn["long: draw-binarized-attn-T64-s0 (finished, 3 epochs)"] == [79.0, 78.0, 77.0]
    assert drawn["long: draw-binarized-attn-T64-s0"] == [89.0, 88.0, 87.0]
    figures.clear()
    report.plot_curves_vs_paper([(tmp_path / "quick.json", make_record())], tmp_path / "none", figures)
    assert figures == []  # no Table 1 or 2 model in it: no figure


def test_a_stuck_per_step_model_counts_once_among_the_seeds_left_out(tmp_path):
    """A per-step model has a test-error row per glimpse count: left out, it is one seed, not eight."""
    from bench import report

    rec = make_record(seeds=(0, 1))
    rec["curves"]["clf-s1"] = [{"epoch": e, "images_seen": 100 * e, "valid_error": 0.8} for e in (1, 2)]
    rec["jobs"] = {f"clf-s{s}": {"kind": "classifier", "status": "complete", "seed": s} for s in (0, 1)}
    records.write(rec, tmp_path / "run.json")
    [(label, points)] = report.error_series([(tmp_path / "run.json", rec)])["cluttered60"].items()
    assert label.endswith("run run; 1 seed left out: plateau or relapse")
    assert points == {t: [e] for t, e in {1: 0.40, 2: 0.25, 4: 0.12, 8: 0.08}.items()}  # seed 0's alone
