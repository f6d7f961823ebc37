"""Upper bounds on DRAW's negative log-likelihood, in nats per image.

``elbo_bound``: the variational bound -ELBO = E_q[-log p(x | z)] + sum_t KL(q(z_t | x) || N(0, I)),
with the KL exact and the reconstruction term estimated from one posterior sample per image.

``iwae_bound``: the importance-weighted bound (Burda et al. 2016) with K samples of the whole
latent sequence z_1..T per image,

    -log p(x) <= -log (1/K) sum_k p(x | z^k) prod_t N(z^k_t; 0, I) / prod_t N(z^k_t; mu_t, sigma_t),

which tightens as K grows and equals the one-sample ELBO estimate at K = 1.

Both take ``batches``: an iterable of image tensors (B, C, H, W) or (B, H, W), or of tuples whose
first element is one (labels are ignored); floats in [0, 1] or uint8 in {0..255} (divided by 255).
The likelihood is Bernoulli, so the numbers are NLLs only for binary images. Whether the test
binarization is fixed or fresh per sample is the caller's choice; record it next to the numbers.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Iterable

import numpy as np
import torch


def as_images(batch, device: torch.device | str | None = None) -> torch.Tensor:
    """One batch as float images (B, C, H, W) in [0, 1] on ``device``; a clear error otherwise."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("empty batch tuple: expected (images, ...) or an image tensor")
        batch = batch[0]
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if not torch.is_tensor(batch):
        raise TypeError(f"a batch must be a tensor or array of images, got {type(batch).__name__}")
    x = batch.to(device) if device is not None else batch
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not x.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or float in [0, 1], got dtype {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"images must have shape (B, H, W) or (B, C, H, W), got {tuple(x.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"image values must lie in [0, 1] (or uint8 0..255), got range "
                         f"[{x.min().item():.3g}, {x.max().item():.3g}]; scale them first")
    return x


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _device(model: torch.nn.Module, device) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


def _take(batches: Iterable, limit: int | None, device, dtype: torch.dtype) -> Iterable[torch.Tensor]:
    """Image batches until ``limit`` images (all when None), in the model's float ``dtype`` (float64
    arrays, as np.loadtxt gives, meet a float32 model)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None (all images), got {limit}")
    seen = 0
    for batch in batches:
        x = as_images(batch, device).to(dtype)
        if limit is not None:
            x = x[: limit - seen]
        if x.shape[0]:
            seen += x.shape[0]
            yield x
        if limit is not None and seen >= limit:
            return


NoiseFn = Callable[[int, int, int], torch.Tensor]
"""``noise(start, count, samples)``: the posterior noise eps, shape (T, count * samples, z), for the
images at positions start .. start + count - 1 of the evaluation order, image-major (the samples
of one image are adjacent, as ``repeat_interleave`` lays them out). Callers that need the noise to
be a function of the data (the harness: the same number on any number of processes) pass one."""

Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Applied to the float64 sums before they are divided (the harness passes a distributed all-reduce)."""


class eval_mode:
    """Eval mode and no_grad for the duration; the previous mode is restored."""

    def __init__(self, model):
        self.model, self.was_training = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self):
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def elbo_bound(model, batches: Iterable, device=None, limit: int | None = None, seed: int = 0,
               noise: NoiseFn | None = None, reduce: Reduce | None = None) -> dict:
    """Negative ELBO averaged over all images: dict(nll_elbo, kl, reconstruction, kl_per_step, n_images).

    Runs under no_grad in whatever batch size ``batches`` has (large ones are faster). ``seed``
    fixes the posterior noise, so the same model and data give the same number; ``noise`` (see
    NoiseFn) supplies it instead, and ``reduce`` combines the sums of several processes.
    """
    device = _device(model, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    steps = model.config.steps
    sums = torch.zeros(steps + 2, dtype=torch.float64)  # KL of every step, reconstruction, images
    with eval_mode(model):
        model.to(device)
        for x in _take(batches, limit, device, _dtype(model)):
            n = int(sums[-1])
            eps = None if noise is None else noise(n, x.shape[0], 1)
            out = model(x, eps, windows=False, generator=gen)
            sums[:steps] += out.kl.double().sum(0).cpu()
            sums[steps] += float(out.reconstruction.double().sum())
            sums[-1] += x.shape[0]
    if reduce is not None:
        sums = reduce(sums)
    n = int(sums[-1])
    if n == 0:
        raise ValueError("elbo_bound got no images: the batches iterable was empty")
    kl_steps, rec = sums[:steps] / n, float(sums[steps]) / n
    kl = float(kl_steps.sum())
    return {"nll_elbo": rec + kl, "kl": kl, "reconstruction": rec, "kl_per_step": kl_steps.tolist(), "n_images": n}


class _Progress:
    """A tqdm bar on a terminal, plain log lines (about every 10% or 30 s) otherwise."""

    def __init__(self, enabled: bool, total: int | None, desc: str, log: Callable[[str], None] | None):
        self.total, self.desc, self.done = total, desc, 0
        self.bar = None
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.enabled = enabled
        self.t0 = self.last = time.monotonic()
        self.next_frac = 0.1
        if enabled and log is None and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", leave=False)

    def update(self, k: int, nll: float):
        self.done += k
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(k)
            self.bar.set_postfix(nll=f"{nll:.2f}")
            return
        now = time.monotonic()
        frac = self.done / self.total if self.total else None
        if (frac is not None and frac >= self.next_frac) or now - self.last >= 30:
            of = f"/{self.total}" if self.total else ""
            self.log(f"{self.desc}: {self.done}{of} images, running NLL {nll:.3f} nats, {now - self.t0:.0f} s")
            self.last = now
            while frac is not None and self.next_frac <= frac:
                self.next_frac += 0.1

    def close(self):
        if self.bar is not None:
            self.bar.close()


def iwae_bound(model, batches: Iterable, k: int = 100, device=None, progress: bool = True, chunk: int = 4096,
               limit: int | None = None, seed: int = 0, total: int | None = None,
               log: Callable[[str], None] | None = None, noise: NoiseFn | None = None,
               reduce: Reduce | None = None) -> dict:
    """Importance-weighted bound with ``k`` samples per image: dict(nll_iwae, nll_elbo_mc, k, n_images).

    ``nll_elbo_mc`` is the ELBO's NLL bound on the same images from the same samples, the mean of
    -log w over the ``k`` of each image (its KL by Monte Carlo, not in closed form): the bound the
    IWAE tightens, paired with it image for image.

    Each image is repeated ``k`` times; about ``chunk`` rows (images x samples) go through the
    model at once. ``limit`` evaluates only the first ``limit`` images (record it). Progress is a
    tqdm bar on a terminal, else log lines through ``log`` (default stderr); ``total`` is the
    number of images expected, for the bar (``limit`` when given). ``noise`` and ``reduce`` as in
    ``elbo_bound``.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (samples per image) must be an integer >= 1, got {k!r}")
    if chunk < 1:
        raise ValueError(f"chunk (rows per forward pass) must be >= 1, got {chunk}")
    device = _device(model, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    per = max(1, chunk // k)  # images per forward pass
    bar = _Progress(progress, limit if limit is not None else total, f"IWAE k={k}", log)
    nll, elbo, n = 0.0, 0.0, 0
    try:
        with eval_mode(model):
            model.to(device)
            for x in _take(batches, limit, device, _dtype(model)):
                for s in range(0, x.shape[0], per):
                    xs = x[s:s + per]
                    eps = None if noise is None else noise(n, xs.shape[0], k)
                    lw = model(xs.repeat_interleave(k, 0), eps, windows=False, generator=gen).log_weight
                    lw = lw.double().view(xs.shape[0], k)
                    nll += float(-(torch.logsumexp(lw, dim=1) - math.log(k)).sum())
                    elbo += float(-lw.mean(dim=1).sum())
                    n += xs.shape[0]
                    bar.update(xs.shape[0], nll / n)
    finally:
        bar.close()
    if reduce is not None:
        nll, elbo, n = reduce(torch.tensor([nll, elbo, n], dtype=torch.float64)).tolist()
        n = int(n)
    if n == 0:
        raise ValueError("iwae_bound got no images: the batches iterable was empty")
    return {"nll_iwae": nll / n, "nll_elbo_mc": elbo / n, "k": k, "n_images": n}
