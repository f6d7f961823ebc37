"""The Recurrent Attention Model, RAM (Mnih, Heess, Graves, Kavukcuoglu 2014, sec. 3-4): hard attention
trained with REINFORCE.

Per step t = 1..T:
    l_{t-1} ~ N(f_l(h_{t-1}), std^2 I) in training, = f_l(h_{t-1}) at evaluation    (location network)
             (f_l reads h_{t-1} detached with reinforce_into_core=False; with reinforce_core_scale = k
              the REINFORCE gradient reaches h_{t-1} multiplied by k)
    rho = retina(x, l_{t-1})                       k patches g x g at scales 1, 2, 4, ... (models/retina.py)
    g_t = ReLU(Linear(ReLU(Linear(rho))) + Linear(ReLU(Linear(l_{t-1}))))            ("what" + "where")
    h_t = LSTM(g_t, h_{t-1}), or ReLU(Linear(g_t) + Linear(h_{t-1})) with core="relu"  (core)
    logits_t = Linear(h_t);  b_{t-1} = Linear(h_{t-1})                               (classifier, baseline)
h_0 = 0, so the first location is learned but the same for every image (as in models/classifier.py).
The LSTM core keeps nn.LSTMCell's parameters but runs them as models/classifier.py does: two addmm
calls and the fused gate step of models/lstm.py.
f_l is Linear followed by tanh, which keeps the mean inside the image.

Hybrid loss (sec. 4): cross-entropy of the last step's logits, plus REINFORCE on the locations with
reward R = 1 when the last step's prediction is right (else 0) and the learned baseline b_t, plus
the baseline's squared error; with ``samples`` = M each image runs as M episodes (eq. 2). The baseline
reads h detached, so its loss does not shape the core.

The location noise is given (``noise``: the harness keys it by each image's place in the epoch, so
that it is the same on any number of processes, bench/tasks.py RamTask), or comes from the global torch
RNG (or ``generator``), whose state the training loop's checkpoints keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from . import flops
from .common import ConfigMixin, param_count
from .lstm import lstm_pointwise
from .reinforce import baseline_loss, gaussian_log_prob, reinforce_loss
from .retina import integral_image, patch_origin, retina, retina_flops


CORES = ("lstm", "relu")


@dataclass
class RamConfig(ConfigMixin):
    """Defaults: the 100 x 100 cluttered MNIST setting of DRAW's Table 1 (12 x 12 patches, 4 scales)."""

    height: int = 100
    width: int = 100
    channels: int = 1
    glimpses: int = 8
    patch: int = 12
    scales: int = 4
    glimpse_hidden: int = 128  # h_g, the "what" layer
    location_hidden: int = 128  # h_l, the "where" layer
    glimpse_size: int = 256  # g_t, the core's input
    hidden: int = 256  # the core's state
    # "lstm" (the default here); "relu" is the RAM paper's core for its classification experiments
    # (sec. 4.1): h_t = ReLU(Linear(h_{t-1}) + Linear(g_t))
    core: str = "lstm"
    num_classes: int = 10
    location_std: float = 0.2  # fixed std of the location policy, in units of half the image side
    # The paper trains every parameter with the hybrid gradient, so REINFORCE reaches the core through
    # the location mean; False reads h detached there (as some public ports do): the core then
    # learns from the cross-entropy alone and the location network from REINFORCE alone.
    reinforce_into_core: bool = True
    # With reinforce_into_core, the REINFORCE gradient that reaches the core through the location mean is
    # multiplied by this (1: the paper's hybrid gradient); the forward pass is the same for every value.
    # Between 0 and 1 the core is taught to keep what the policy reads (where the digit is) while the
    # cross-entropy still dominates its gradient.
    reinforce_core_scale: float = 1.0
    # M in the paper's REINFORCE estimate (eq. 2): each training image is run M times, each with its own
    # sampled locations, and every term is averaged over the B * M episodes (M times the cost per image)
    samples: int = 1

    def __post_init__(self):
        for name in ("height", "width", "channels", "glimpses", "patch", "scales", "glimpse_hidden",
                     "location_hidden", "glimpse_size", "hidden", "num_classes", "samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"RamConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.location_std > 0:
            raise ValueError(f"RamConfig.location_std must be > 0, got {self.location_std}")
        if not self.reinforce_core_scale >= 0:
            raise ValueError(f"RamConfig.reinforce_core_scale must be >= 0, got {self.reinforce_core_scale}")
        if self.core not in CORES:
            raise ValueError(f"RamConfig.core must be one of {CORES}, got {self.core!r}")


class RamOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, classes): every step; [:, -1] is the prediction
    windows: torch.Tensor | None  # (B, T, 2) the location of each glimpse, with keep_windows
    locations: torch.Tensor  # (B, T, 2) the location of each glimpse, in [-1, 1] after clamping
    log_probs: torch.Tensor | None  # (B, T) log pi of each sampled location; None when not sampled
    baselines: torch.Tensor  # (B, T) b_t, the expected reward predicted before each glimpse


class GlimpseNetwork(nn.Module):
    """g = ReLU(Linear(h_g) + Linear(h_l)), h_g = ReLU(Linear(retina)), h_l = ReLU(Linear(location))."""

    def __init__(self, c: RamConfig):
        super().__init__()
        self.patch, self.scales = c.patch, c.scales
        self.what = nn.Linear(c.scales * c.channels * c.patch * c.patch, c.glimpse_hidden)
        self.where = nn.Linear(2, c.location_hidden)
        self.what_out = nn.Linear(c.glimpse_hidden, c.glimpse_size)
        self.where_out = nn.Linear(c.location_hidden, c.glimpse_size)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """What every glimpse of a sequence of ``x`` reads: the images' integral (models/retina.py)."""
        return integral_image(x)

    def sense(self, x: torch.Tensor, loc: torch.Tensor, integral: torch.Tensor | None) -> torch.Tensor:
        """The retina's glimpses (B, scales, C, patch, patch) around ``loc``."""
        return retina(x, loc, self.patch, self.scales, integral)

    def forward(self, x: torch.Tensor, loc: torch.Tensor, integral: torch.Tensor | None = None) -> torch.Tensor:
        rho = self.sense(x, loc, integral).flatten(1)
        h_g = F.relu(self.what(rho))
        h_l = F.relu(self.where(loc))
        return F.relu(self.what_out(h_g) + self.where_out(h_l))


class RecurrentAttentionModel(nn.Module):
    attention_type = "hard"

    def __init__(self, config: RamConfig | None = None):
        super().__init__()
        self.config = c = config or RamConfig()
        self.glimpse = GlimpseNetwork(c)
        self.core = nn.LSTMCell(c.glimpse_size, c.hidden) if c.core == "lstm" else nn.RNNCell(
            c.glimpse_size, c.hidden, nonlinearity="relu")
        self.locate = nn.Linear(c.hidden, 2)
        self.baseline = nn.Linear(c.hidden, 1)
        self.head = nn.Linear(c.hidden, c.num_classes)

    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        want = (c.channels, c.height, c.width)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"RecurrentAttentionModel expects images (B, {c.channels}, {c.height}, {c.width}), "
                             f"got {tuple(x.shape)}: add the channel axis or set height/width/channels")
        if not x.is_floating_point():
            raise ValueError(f"RecurrentAttentionModel expects float images in [0, 1], got dtype {x.dtype}")

    def location_mean(self, h: torch.Tensor) -> torch.Tensor:
        """f_l(h): the mean of the next location, read from the core's state h with the gradient back into
        the core as the config says (none, a share, or all of it)."""
        c = self.config
        if not c.reinforce_into_core or c.reinforce_core_scale == 0:
            h = h.detach()
        elif c.reinforce_core_scale != 1:
            h = h.detach() + c.reinforce_core_scale * (h - h.detach())
        return torch.tanh(self.locate(h))

    def forward(self, x: torch.Tensor, keep_windows: bool = True, sample: bool | None = None,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> RamOutput:
        """``sample``: draw the locations (default: in training mode) or take the policy's mean (eval).
        ``noise``: (T, B, 2) standard normals for the sampled locations, else drawn here."""
        self._check(x)
        c = self.config
        sample = self.training if sample is None else sample
        batch = x.shape[0]
        if sample and noise is not None and tuple(noise.shape) != (c.glimpses, batch, 2):
            raise ValueError(f"RAM: noise must have shape (T, B, 2) = {(c.glimpses, batch, 2)}, "
                             f"got {tuple(noise.shape)}")
        w_ih, w_hh = self.core.weight_ih.t(), self.core.weight_hh.t()
        bias = self.core.bias_ih + self.core.bias_hh
        h = x.new_zeros(batch, c.hidden)
        cell = torch.zeros_like(h)
        integral = self.glimpse.prepare(x)  # once: every glimpse of the sequence reads it
        hs, locs, log_probs = [], [], []
        for t in range(c.glimpses):
            mean = self.location_mean(h)
            if sample:
                e = noise[t].to(mean.dtype) if noise is not None else torch.randn(
                    mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
                loc = (mean + c.location_std * e).detach()
                log_probs.append(gaussian_log_prob(loc, mean, c.location_std))
            else:
                loc = mean.detach()
            loc = loc.clamp(-1.0, 1.0)
            gates = torch.addmm(bias, self.glimpse(x, loc, integral), w_ih)
            if t > 0:  # h_0 = 0 adds nothing
                gates = torch.addmm(gates, h, w_hh)
            if c.core == "lstm":
                h, cell = lstm_pointwise(gates, cell)
            else:
                h = F.relu(gates)
            hs.append(h)
            locs.append(loc)
        # b_t reads h_{t-1} (detached): all steps' baselines in one product
        before = torch.stack([torch.zeros_like(h)] + hs[:-1], dim=1).detach()
        baselines = self.baseline(before).squeeze(-1)
        logits = self.head(torch.stack(hs, dim=1))
        locations = torch.stack(locs, dim=1)
        return RamOutput(logits, locations if keep_windows else None, locations,
                         torch.stack(log_probs, dim=1) if sample else None, baselines)

    def loss(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, RamOutput]:
        """The hybrid loss when the locations are sampled (training mode), else the cross-entropy alone.
        In training each image is run ``samples`` times (episodes next to each other in ``out``);
        ``noise``, when given, is (T, B * samples, 2) in that order."""
        m = self.config.samples
        if self.training and m > 1:
            x, y = x.repeat_interleave(m, dim=0), y.repeat_interleave(m, dim=0)
        out = self.forward(x, keep_windows=False, noise=noise)
        last = out.logits[:, -1]
        loss = F.cross_entropy(last, y)
        if out.log_probs is not None:
            reward = (last.argmax(-1) == y).to(last.dtype)
            loss = loss + reinforce_loss(out.log_probs, reward, out.baselines) + baseline_loss(reward, out.baselines)
        return loss, out

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) predicted class after every glimpse count, locations at the policy's mean."""
        return self.forward(x, keep_windows=False, sample=False).logits.argmax(dim=-1)

    def glimpse_boxes(self, locations: torch.Tensor) -> dict[str, torch.Tensor]:
        """The smallest patch of each glimpse for drawing: its centre (gx, gy) in 1-based pixels (the
        convention of models/attention.py) and its side, from locations (B, T, 2)."""
        c = self.config
        x0 = patch_origin(locations[..., 0], c.width, c.patch)
        y0 = patch_origin(locations[..., 1], c.height, c.patch)
        half = c.patch / 2
        return {"gx": x0 + half + 0.5, "gy": y0 + half + 0.5, "side": torch.full_like(x0, c.patch)}

    def policy_parameters(self) -> list[nn.Parameter]:
        """The location network's parameters (the policy REINFORCE trains): an optimiser may give them
        a rate of their own (bench/optim.py policy_lr_scale)."""
        return list(self.locate.parameters())

    def param_count(self) -> int:
        return param_count(self)

    def flops_per_image(self, train: bool = False) -> int:
        c = self.config
        per_step = retina_flops(c.channels, c.patch, c.scales)
        per_step += flops.linear(c.scales * c.channels * c.patch ** 2, c.glimpse_hidden) + c.glimpse_hidden
        per_step += flops.linear(2, c.location_hidden) + c.location_hidden
        per_step += flops.linear(c.glimpse_hidden, c.glimpse_size) + flops.linear(c.location_hidden, c.glimpse_size)
        per_step += 2 * c.glimpse_size  # add, ReLU
        if c.core == "lstm":
            per_step += flops.lstm_cell(c.glimpse_size, c.hidden)
        else:
            per_step += flops.linear(c.glimpse_size, c.hidden) + flops.linear(c.hidden, c.hidden) + 2 * c.hidden
        per_step += flops.linear(c.hidden, 2) + 2 + flops.linear(c.hidden, 1)  # location mean (tanh), baseline
        per_step += flops.linear(c.hidden, c.num_classes) + flops.softmax_cross_entropy(c.num_classes)
        total = c.glimpses * per_step
        return flops.train_step(total) * c.samples if train else total
