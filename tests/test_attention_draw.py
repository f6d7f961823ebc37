"""The window-drawing helper: right outline coordinates, and it renders to a PNG."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from models import attention as att  # noqa: E402
from models.draw_window import draw_windows, window_outline  # noqa: E402


def test_outline_of_a_known_window():
    # 28 x 28, g~ = 0 -> g = 14.5 (1-based) = 13.5 (0-based); delta = 2, n = 5 -> mu = 10.5 .. 18.5
    assert window_outline(14.5, 14.5, 2.0, 5) == (9.5, 9.5, 17.5, 17.5)
    # identity grid (n = W, delta = 1, centred) spans the pixel centres 0 .. W-1
    assert window_outline(5.5, 3.0, 1.0, 10)[0::2] == (0.0, 9.0)


def test_outline_matches_the_filterbank_centres():
    params = torch.tensor([[0.3, -0.2, -4.0, -1.0, 0.0]], dtype=torch.float64)
    win = att.window_from_params(params, 40, 50, 6)
    x0, y0, x1, y1 = window_outline(float(win.gx), float(win.gy), float(win.delta), 6)
    peak_x = win.fx[0].argmax(dim=1)  # 0-based pixel nearest each mu (sigma is small)
    peak_y = win.fy[0].argmax(dim=1)
    assert abs(peak_x[0] - x0) <= 0.5 and abs(peak_x[-1] - x1) <= 0.5
    assert abs(peak_y[0] - y0) <= 0.5 and abs(peak_y[-1] - y1) <= 0.5


def test_draw_renders_png_with_the_outlines(tmp_path):
    params = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [0.5, -0.5, 0.0, -1.0, 0.0]])
    steps = [att.window_from_params(params, 28, 28, 5), att.window_from_params(params * 0.5, 28, 28, 5)]
    fig, ax = plt.subplots()
    outlines = draw_windows(ax, torch.rand(1, 28, 28), steps, index=1)
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(rects) == 2 == len(outlines)
    w0 = steps[0]
    expect = window_outline(float(w0.gx[1]), float(w0.gy[1]), float(w0.delta[1]), 5)
    assert outlines[0] == pytest.approx(expect)
    assert rects[0].get_xy() == pytest.approx(expect[:2])
    assert rects[0].get_width() == pytest.approx(expect[2] - expect[0])
    out = tmp_path / "windows.png"
    fig.savefig(out)
    plt.close(fig)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000


def test_draw_accepts_stacked_sequences_and_tuples():
    w = att.window_from_params(torch.zeros(3, 5), 20, 30, 4)
    stacked = type(w)(*(torch.stack([t, t], dim=1) for t in w))  # fields (B, T) as DRAW stacks them
    fig, ax = plt.subplots()
    assert len(draw_windows(ax, torch.rand(20, 30), stacked, index=2)) == 2
    assert draw_windows(ax, torch.rand(20, 30), [(15.5, 10.5, 2.0, 4)]) == [(11.5, 6.5, 17.5, 12.5)]
    with pytest.raises(ValueError, match="image"):
        draw_windows(ax, torch.rand(2, 2, 2, 2), [(1.0, 1.0, 1.0, 2)])
    plt.close(fig)
