"""Escape from the starting plateau, relapses, and the loud flag on a run that never left it."""

from __future__ import annotations

from bench import plateau


def curve(values, key="valid_error"):
    return [{"epoch": i + 1, "images_seen": 1000 * (i + 1), key: v} for i, v in enumerate(values)]


def test_escape_and_relapse():
    r = plateau.analyse(curve([0.85, 0.80, 0.40, 0.13, 0.82, 0.07, 0.14, 0.10]), plateau.CLASSIFIER)
    assert r["escaped"] == {"epoch": 3, "images_seen": 3000, "value": 0.40} and not r["on_plateau"]
    assert [(x["epoch"], x["best_before"]) for x in r["relapses"]] == [(5, 0.13), (7, 0.07)]
    text = plateau.describe(r, plateau.CLASSIFIER)
    assert "epoch 3" in text and "2 relapse(s), worst at epoch 5" in text


def test_a_run_that_never_leaves_is_flagged():
    r = plateau.analyse(curve([0.88, 0.81, 0.79, 0.80]), plateau.CLASSIFIER)
    assert r["on_plateau"] and r["escaped"] is None and r["relapses"] == []
    assert plateau.describe(r, plateau.CLASSIFIER).startswith("WARNING: never left")


def test_small_wobbles_are_not_relapses():
    r = plateau.analyse(curve([0.5, 0.2, 0.22, 0.19, 0.23]), plateau.CLASSIFIER)
    assert r["relapses"] == []


def test_draw_curve_uses_the_elbo():
    r = plateau.analyse(curve([210, 190, 140, 120, 131], key="valid_nll_elbo"), plateau.DRAW)
    assert r["escaped"]["epoch"] == 3 and [x["epoch"] for x in r["relapses"]] == [5]


def test_a_draw_run_that_draws_more_than_the_mean_image_has_left():
    """One epoch of attention DRAW (186, then 152 nats) has left the ~200-nat plateau; 195-210 has not."""
    assert not plateau.analyse(curve([186.2, 152.2], key="valid_nll_elbo"), plateau.DRAW)["on_plateau"]
    assert plateau.analyse(curve([207.0, 198.5, 195.0], key="valid_nll_elbo"), plateau.DRAW)["on_plateau"]


def test_a_run_that_relapses_and_never_comes_back_is_told_apart_from_one_that_recovers():
    stayed = plateau.analyse(curve([0.85, 0.30, 0.07, 0.84, 0.80, 0.67]), plateau.CLASSIFIER)
    assert not stayed["on_plateau"] and stayed["ended_relapsed"] == {"epoch": 4, "value": 0.84}
    recovered = plateau.analyse(curve([0.85, 0.30, 0.07, 0.82, 0.09, 0.06]), plateau.CLASSIFIER)
    assert recovered["ended_relapsed"] is None and len(recovered["relapses"]) == 1


def test_draws_plateau_is_set_by_the_dataset():
    """Nats depend on the images: the two-digit run's first 23 epochs (60x60 grey levels, mean image
    about 624 nats) left its plateau at epoch 1, though never below binarized MNIST's 180."""
    twodigit = [411.9, 379.7, 374.1, 353.0, 341.0, 344.4, 336.8, 338.3, 324.2, 340.6, 317.2, 377.3, 325.9]
    rule = plateau.for_task("draw", "twodigit60")
    r = plateau.analyse(curve(twodigit, key="valid_nll_elbo"), rule)
    assert not r["on_plateau"] and r["escaped"]["epoch"] == 1
    assert [e["epoch"] for e in r["relapses"]] == [10, 12]  # 340.6 after 324.2, 377.3 after 317.2
    assert plateau.analyse(curve(twodigit, key="valid_nll_elbo"), plateau.DRAW)["on_plateau"]  # the wrong rule
    assert plateau.analyse(curve([610.0, 590.0, 565.3], key="valid_nll_elbo"), rule)["on_plateau"]
    assert plateau.for_task("draw", "binarized") is plateau.DRAW
    assert plateau.for_task("draw", "some-custom-variant") is None  # no rule measured: no check
    assert plateau.for_task("ram", "cluttered60") is plateau.CLASSIFIER


def test_an_extension_that_left_the_plateau_drops_the_earlier_warning():
    from types import SimpleNamespace

    from bench.unit_runs import UnitRuns

    runs = SimpleNamespace(opts=SimpleNamespace(dry_run=False), log=lambda m: None)
    unit = SimpleNamespace(id="classifier-cluttered100-T8-s0",
                           job=SimpleNamespace(kind="classifier", dataset="cluttered100"))
    record = {"notes": ["other-unit: a note that stays"]}
    assert UnitRuns._plateau(runs, unit, curve([0.85, 0.82, 0.80]), {}, record) == {"on_plateau": True}
    assert record["notes"][1].startswith(f"{unit.id}: WARNING: never left")
    assert UnitRuns._plateau(runs, unit, curve([0.85, 0.82, 0.80, 0.30, 0.09]), {}, record) == {}
    assert record["notes"] == ["other-unit: a note that stays"]
