"""The recurrent glimpse classifier, "differentiable RAM" (Gregor et al. 2015, sec. 4.1, Table 1).

An LSTM takes one n x n glimpse per step through DRAW's selective read; the window of step t
comes from the hidden state of step t-1 (h_0 = 0, so the first window is learned but the same
for every image). A softmax layer on h_t gives logits at every step; the prediction is the
last step's. With ``per_step_loss`` the loss is the mean cross-entropy over all steps, so one
model gives the error at every glimpse count 1..T; otherwise only the last step is trained.

Speed (each measured in the README): the first glimpse is read with one shared window (h_0 = 0)
as two plain matmuls and step 1 skips the hidden projection; without attention the image's
input projection is computed once for all steps; the LSTM's gate algebra is one fused autograd
node (models/lstm.py); the classifier head runs once on all steps' hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from . import flops
from .attention import WINDOW_INITS, Window, make_read
from .common import ConfigMixin, param_count
from .lstm import lstm_pointwise


@dataclass
class ClassifierConfig(ConfigMixin):
    """Defaults: Table 3, 100 x 100 cluttered MNIST classification."""

    height: int = 100
    width: int = 100
    channels: int = 1
    glimpses: int = 8
    read_n: int = 12
    hidden: int = 256
    num_classes: int = 10
    attention: bool = True
    per_step_loss: bool = False
    window_init: str = "cover"  # models/attention.py WindowHead: "cover" or "default" (public ports)

    def __post_init__(self):
        for name in ("height", "width", "channels", "glimpses", "hidden", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClassifierConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.attention and self.read_n < 1:
            raise ValueError(f"ClassifierConfig.read_n must be >= 1 with attention, got {self.read_n}")
        if self.window_init not in WINDOW_INITS:
            raise ValueError(f"ClassifierConfig.window_init must be one of {WINDOW_INITS}, got {self.window_init!r}")


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, classes): every step; [:, -1] is the prediction
    windows: list[Window] | None  # one Window per step, None without attention


class GlimpseClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = c = config or ClassifierConfig()
        self.read = make_read(c.attention, c.hidden, c.height, c.width, c.read_n, c.channels,
                              window_init=c.window_init)
        self.lstm = nn.LSTMCell(self.read.out_features, c.hidden)
        self.head = nn.Linear(c.hidden, c.num_classes)

    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        want = (c.channels, c.height, c.width)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"GlimpseClassifier expects images (B, {c.channels}, {c.height}, {c.width}), "
                             f"got {tuple(x.shape)}: add the channel axis or set height/width/channels")
        if not x.is_floating_point():
            raise ValueError(f"GlimpseClassifier expects float images in [0, 1], got dtype {x.dtype}")
        weights = self.head.weight.dtype
        if x.dtype != weights:
            raise ValueError(f"GlimpseClassifier: images are {x.dtype} and its weights {weights}: cast the images "
                             f"(x.to({weights})) or the model (model.to({x.dtype}))")

    def _first_glimpse(self, x: torch.Tensor) -> tuple[torch.Tensor, Window]:
        """Step 1 reads with h_0 = 0, so one window serves the whole batch: build its filterbanks
        once and read every image with two plain matmuls."""
        win = self.read.head(x.new_zeros(1, self.config.hidden))
        batch, ch, height, width = x.shape
        n = self.config.read_n
        # x Fx^T as one (B*C*H, W) @ (W, n) matmul, then Fy over the rows: no copy of x.
        t = torch.mm(x.reshape(-1, width), win.fx[0].t()).view(batch * ch, height, n)
        glimpse = torch.matmul(win.fy[0], t) * win.gamma[0]
        return glimpse.reshape(batch, -1), Window(*(t.expand(batch, *t.shape[1:]) for t in win))

    def forward(self, x: torch.Tensor, keep_windows: bool = True) -> ClassifierOutput:
        self._check(x)
        c = self.config
        k, batch = c.hidden, x.shape[0]
        w_ih, w_hh = self.lstm.weight_ih.t(), self.lstm.weight_hh.t()
        b = self.lstm.bias_ih + self.lstm.bias_hh
        if not c.attention:  # the input never changes: project it once for all steps
            x_proj = torch.addmm(b, x.flatten(1), w_ih)
        hs, windows = [], []
        h = cell = None
        for t in range(c.glimpses):
            if c.attention:
                feats, win = self._first_glimpse(x) if t == 0 else self.read([x], h)
                gates = torch.addmm(b, feats, w_ih)
                if keep_windows:
                    windows.append(win)
            else:
                gates = x_proj
            if t > 0:  # h_0 = 0 contributes nothing
                gates = torch.addmm(gates, h, w_hh)
            h, cell = lstm_pointwise(gates, cell if t > 0 else gates.new_zeros(batch, k))
            hs.append(h)
        logits = self.head(torch.stack(hs, dim=1))
        return ClassifierOutput(logits, windows if c.attention and keep_windows else None)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ClassifierOutput]:
        """Cross-entropy of the last step, or the mean over all steps with ``per_step_loss``."""
        out = self.forward(x, keep_windows=False)
        if self.config.per_step_loss:
            t = out.logits.shape[1]
            return F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.repeat_interleave(t)), out
        return F.cross_entropy(out.logits[:, -1], y), out

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) predicted class after every glimpse count 1..T; [:, -1] is the model's answer."""
        return self.forward(x, keep_windows=False).logits.argmax(dim=-1)

    def param_count(self) -> int:
        return param_count(self)

    def flops_per_image(self, train: bool = False) -> int:
        c = self.config
        per_step = flops.lstm_cell(self.read.out_features, c.hidden)
        if c.attention:
            per_step += flops.window(c.hidden, c.read_n, c.height, c.width)
            per_step += flops.read(c.channels, c.height, c.width, c.read_n)
        per_step += flops.linear(c.hidden, c.num_classes) + flops.softmax_cross_entropy(c.num_classes)
        total = c.glimpses * per_step
        return flops.train_step(total) if train else total


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Error rate (fraction wrong) after every glimpse count 1..T, shape (T,), on float images (N, C, H, W)."""
    was_training = model.training
    model.eval()
    wrong = None
    for s in range(0, images.shape[0], batch_size):
        pred = model.predict(images[s: s + batch_size])
        w = (pred != labels[s: s + batch_size, None].to(pred.device)).sum(dim=0)
        wrong = w if wrong is None else wrong + w
    model.train(was_training)
    return wrong.double() / images.shape[0]


def compiled_loss(model: GlimpseClassifier, **compile_kwargs):
    """``torch.compile(model.loss)``: optional. On this project's 2-core CPU the first call compiles
    for about 2 minutes, after which a training step is about 1.5x faster (README, Models)."""
    return torch.compile(model.loss, **compile_kwargs)
