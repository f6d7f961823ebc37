"""`python -m datasets show`: a PNG grid of a split's first examples, its title saying what it shows."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from datasets import show  # noqa: E402


def test_the_grid_is_a_png_titled_with_its_split_seed_and_epoch(tmp_path, monkeypatch, mnist_data):
    titles = []
    original = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, **kw: titles.append(t) or original(self, t, **kw))
    out = show.draw_grid("cluttered60", n=4, out=tmp_path / "g.png", split="train", seed=3, epoch=2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert titles[-1].startswith("cluttered60 train (seed 3, epoch 2): 60x60")
    show.draw_grid("cluttered60", n=4, out=tmp_path / "t.png", split="test", seed=0)
    assert titles[-1].startswith("cluttered60 test (seed 0): 60x60")
