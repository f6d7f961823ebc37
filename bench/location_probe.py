"""Does a glimpse model know where the digit is? Linear probes for `python -m bench.attention_errors --probe`.

A location policy can only steer towards the digit from what its input holds. For each glimpse
count t this fits a ridge regression from the recurrent state h_t to the digit's centre on the first
``train_share`` of the images and scores it (R^2, averaged over x and y) on the rest. Beside it,
the R^2 of the glimpse centre itself (no fitting: what the policy does with that knowledge) and,
for RAM, the probe of the first glimpse's retina, which shows what the image offers before any
learning of where to look. A state R^2 well below the retina's means the core does not keep where
the digit is; a glimpse R^2 well below the state's means the policy does not use what the core keeps.
"""

from __future__ import annotations

import numpy as np
import torch

from datasets.cliargs import UsageError

TRAIN_SHARE = 0.8
RIDGE_ALPHA = 1.0


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    """1 - SSE / SST per column of (N, 2) arrays, averaged over the columns (x and y)."""
    sse = ((pred - target) ** 2).sum(0)
    sst = ((target - target.mean(0)) ** 2).sum(0)
    if not (sst > 0).all():
        raise UsageError("the digit centres do not vary: a probe needs images with the digit in different places")
    return float(np.mean(1 - sse / sst))


def held_out_r2(features: np.ndarray, target: np.ndarray, train_share: float = TRAIN_SHARE,
                alpha: float = RIDGE_ALPHA) -> float:
    """R^2 on the last (1 - train_share) of the rows of a ridge regression fitted on the first."""
    from sklearn.linear_model import Ridge

    split = int(len(features) * train_share)
    if split < 2 or len(features) - split < 2:
        raise UsageError(f"a probe needs at least 2 images on each side of its split; got {len(features)} "
                         "images: raise --limit")
    fit = Ridge(alpha=alpha).fit(features[:split], target[:split])
    return r2(fit.predict(features[split:]), target[split:])


class StateRecorder:
    """Keeps the recurrent states (B, T, H) that the model's classifier head reads, batch after batch
    (both built-in glimpse models apply ``head`` once to all steps' states)."""

    def __init__(self, model: torch.nn.Module):
        self.states: list[np.ndarray] = []
        self._hook = model.head.register_forward_hook(
            lambda module, inputs, output: self.states.append(inputs[0].detach().cpu().numpy()))

    def take(self) -> np.ndarray:
        self._hook.remove()
        return np.concatenate(self.states).astype(np.float64)


def first_retina(model, x: torch.Tensor) -> np.ndarray:
    """RAM's first glimpse (all scales, flattened) at the policy's mean location, which is the same for
    every image (h_0 = 0)."""
    loc = model.location_mean(x.new_zeros(x.shape[0], model.config.hidden))
    return model.glimpse.sense(x, loc, model.glimpse.prepare(x)).flatten(1).cpu().numpy()


def probe(states: np.ndarray, centres: np.ndarray, digit_centre: np.ndarray,
          retina: np.ndarray | None = None) -> dict:
    """states (N, T, H) recurrent states; centres (N, T, 2) glimpse centres; digit_centre (N, 2), in
    the same pixels as the centres; retina (N, D) RAM's first glimpse, or None."""
    steps = states.shape[1]
    return {
        "train_share": TRAIN_SHARE, "ridge_alpha": RIDGE_ALPHA,
        "state_r2": [held_out_r2(states[:, t], digit_centre) for t in range(steps)],
        "glimpse_r2": [r2(centres[:, t], digit_centre) for t in range(steps)],
        "first_retina_r2": None if retina is None else held_out_r2(retina.astype(np.float64), digit_centre),
    }
