"""Reference rows for the classification tables: a 2-layer conv net and a scikit-learn model on pixels.

The conv net. DRAW's Table 1 lists "Convolutional, 2 layers" (14.35% on 100 x 100 cluttered
MNIST) and RAM's tables list a convolutional net, but neither paper gives the architecture in
full. Ours, chosen to be small and to work for any image size:

    conv 5x5, 16 filters, pad 2, ReLU, max-pool 4x4 (stride 4)
    conv 5x5, 32 filters, pad 2, ReLU, max-pool 2x2 (stride 2)
    dense 256, ReLU, dense num_classes (softmax)

so a 100 x 100 image becomes 16 x 25 x 25, then 32 x 12 x 12 = 4608 features. `bench run` trains it
through the harness's loop (bench/tasks.py ConvTask).

The pixel baseline: PCA of the raw pixels (fitted on a subsample, its size recorded), then a
multinomial logistic regression on the standardised components, so a reader sees what
attention buys over a linear model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import flops
from .common import ConfigMixin, param_count


@dataclass
class ConvNetConfig(ConfigMixin):
    height: int = 100
    width: int = 100
    channels: int = 1
    num_classes: int = 10
    filters1: int = 16
    filters2: int = 32
    kernel: int = 5
    pool1: int = 4
    pool2: int = 2
    hidden: int = 256

    def __post_init__(self):
        if self.kernel % 2 != 1:
            raise ValueError(f"ConvNetConfig.kernel must be odd ('same' padding), got {self.kernel}")
        h, w = self.feature_size()
        if h < 1 or w < 1:
            raise ValueError(f"ConvNetConfig: a {self.height}x{self.width} image is too small for pooling "
                             f"{self.pool1} then {self.pool2}; lower pool1/pool2")

    def feature_size(self) -> tuple[int, int]:
        return self.height // self.pool1 // self.pool2, self.width // self.pool1 // self.pool2


class ConvNet(nn.Module):
    """forward(x (B, C, H, W) float) -> logits (B, classes)."""

    def __init__(self, config: ConvNetConfig | None = None):
        super().__init__()
        self.config = c = config or ConvNetConfig()
        pad = c.kernel // 2
        self.conv1 = nn.Conv2d(c.channels, c.filters1, c.kernel, padding=pad)
        self.conv2 = nn.Conv2d(c.filters1, c.filters2, c.kernel, padding=pad)
        fh, fw = c.feature_size()
        self.fc = nn.Linear(c.filters2 * fh * fw, c.hidden)
        self.out = nn.Linear(c.hidden, c.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.channels, c.height, c.width):
            raise ValueError(f"ConvNet expects images (B, {c.channels}, {c.height}, {c.width}), got {tuple(x.shape)}")
        x = F.max_pool2d(F.relu(self.conv1(x)), c.pool1)
        x = F.max_pool2d(F.relu(self.conv2(x)), c.pool2)
        return self.out(F.relu(self.fc(x.flatten(1))))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.forward(x)
        return F.cross_entropy(logits, y), logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).argmax(dim=-1)

    def param_count(self) -> int:
        return param_count(self)

    def flops_per_image(self, train: bool = False) -> int:
        c = self.config
        h1, w1 = c.height // c.pool1, c.width // c.pool1
        h2, w2 = c.feature_size()
        total = flops.conv2d(c.channels, c.filters1, c.kernel, c.height, c.width)
        total += c.filters1 * c.height * c.width * 2  # ReLU + pooling comparisons
        total += flops.conv2d(c.filters1, c.filters2, c.kernel, h1, w1)
        total += c.filters2 * h1 * w1 * 2
        total += flops.linear(c.filters2 * h2 * w2, c.hidden) + c.hidden
        total += flops.linear(c.hidden, c.num_classes) + flops.softmax_cross_entropy(c.num_classes)
        return flops.train_step(total) if train else total


def _as_features(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"PixelBaseline.{what}: images must be (N, H, W) or (N, C, H, W), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"PixelBaseline.{what}: images must be uint8 in 0..255, got {images.dtype}; "
                         "pass the raw bytes (e.g. (x * 255).round().astype(np.uint8))")
    return images.reshape(images.shape[0], -1)


class PixelBaseline:
    """PCA(components) of the pixels, standardised, then multinomial logistic regression.

    The PCA is fitted on at most ``pca_fit_size`` training images (randomised SVD); the
    logistic regression on up to ``max_train`` images. ``info`` records sizes and seconds.
    """

    def __init__(self, components: int = 64, pca_fit_size: int = 10_000, max_train: int | None = None,
                 c: float = 1.0, max_iter: int = 300, seed: int = 0, chunk: int = 5000):
        if components < 1:
            raise ValueError(f"PixelBaseline: components must be >= 1, got {components}")
        self.components, self.pca_fit_size, self.max_train = components, pca_fit_size, max_train
        self.c, self.max_iter, self.seed, self.chunk = c, max_iter, seed, chunk
        self.info: dict = {}
        self._pca = self._scaler = self._lr = None
        self._shape: tuple[int, ...] | None = None

    def _project(self, flat: np.ndarray) -> np.ndarray:
        out = np.empty((flat.shape[0], self._pca.n_components_), dtype=np.float64)
        for s in range(0, flat.shape[0], self.chunk):
            out[s: s + self.chunk] = self._pca.transform(flat[s: s + self.chunk].astype(np.float32) / 255.0)
        return self._scaler.transform(out)

    def fit(self, images: np.ndarray, labels: np.ndarray) -> "PixelBaseline":
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        flat = _as_features(images, "fit")
        labels = np.asarray(labels)
        if labels.shape != (flat.shape[0],):
            raise ValueError(f"PixelBaseline.fit: {flat.shape[0]} images but labels of shape {labels.shape}")
        self._shape = tuple(np.asarray(images).shape[1:])
        rng = np.random.default_rng(self.seed)
        t0 = time.perf_counter()
        n_train = flat.shape[0] if self.max_train is None else min(self.max_train, flat.shape[0])
        train_idx = np.sort(rng.choice(flat.shape[0], n_train, replace=False)) if n_train < flat.shape[0] \
            else np.arange(flat.shape[0])
        n_pca = min(self.pca_fit_size, n_train)
        pca_idx = np.sort(rng.choice(train_idx, n_pca, replace=False))
        k = min(self.components, n_pca, flat.shape[1])
        self._pca = PCA(n_components=k, svd_solver="randomized", random_state=self.seed)
        self._pca.fit(flat[pca_idx].astype(np.float32) / 255.0)
        t_pca = time.perf_counter() - t0
        self._scaler = StandardScaler()
        raw = np.concatenate([self._pca.transform(flat[train_idx[s: s + self.chunk]].astype(np.float32) / 255.0)
                              for s in range(0, n_train, self.chunk)]).astype(np.float64)
        feats = self._scaler.fit_transform(raw)
        self._lr = LogisticRegression(C=self.c, max_iter=self.max_iter, random_state=self.seed)
        self._lr.fit(feats, labels[train_idx])
        self.info = {"model": "pca+logreg", "components": int(k), "pca_fit_size": int(n_pca),
                     "train_size": int(n_train), "c": self.c, "max_iter": self.max_iter, "seed": self.seed,
                     "explained_variance": float(self._pca.explained_variance_ratio_.sum()),
                     "pca_seconds": t_pca, "fit_seconds": time.perf_counter() - t0}
        return self

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self._lr is None:
            raise RuntimeError("PixelBaseline.predict called before fit")
        flat = _as_features(images, "predict")
        if tuple(np.asarray(images).shape[1:]) != self._shape:
            raise ValueError(f"PixelBaseline was fitted on images of shape {self._shape}, "
                             f"got {tuple(np.asarray(images).shape[1:])}")
        return self._lr.predict(self._project(flat))

    def error(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of images misclassified."""
        return float(np.mean(self.predict(images) != np.asarray(labels)))


def run_baseline(model: str, dataset: str, seed: int = 0, epochs: int = 20, train_limit: int | None = None,
                 device: str | torch.device = "cpu", data_dir=None, test_limit: int | None = None,
                 time_budget_min: float | None = None, log=None, data_seed: int = 0) -> dict:
    """Fit and test the pixel baseline (``model`` "sklearn": PixelBaseline on the fixed train set of
    ``seed``) on a benchmark variant, tested on the test clutter of ``data_seed``, the set every other
    model of the harness is tested on (bench/tasks.py); returns test_error, test_images, data_seed and
    the settings and sizes that produced it. The conv net ("conv") has a training loop: `bench run`
    trains it through the harness's loop (bench/tasks.py ConvTask). ``epochs``, ``device`` and
    ``time_budget_min`` are unused here."""
    from datasets import variants
    from datasets.torch_data import iterate_batches

    spec = variants.get_spec(dataset)
    if getattr(spec, "n_digits", 1) != 1:
        raise ValueError(f"baseline {model!r}: {dataset!r} has {spec.n_digits} digits per image; the classification "
                         "baselines need a single-digit variant (cluttered100, cluttered60, translated60)")
    if model == "conv":
        raise ValueError("the conv-net baseline trains through the harness's loop: bench run (bench/tasks.py ConvTask)")
    if model != "sklearn":
        raise ValueError(f"unknown baseline {model!r}: use 'conv' or 'sklearn'")
    t0 = time.perf_counter()

    def split(name: str, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for x, y in iterate_batches(dataset, name, 5000, seed=seed, data_dir=data_dir, limit=limit):
            xs.append((x[:, 0] * 255).round().to(torch.uint8).numpy())  # the generator's bytes, exactly
            ys.append(y.numpy())
        return np.concatenate(xs), np.concatenate(ys)

    base = PixelBaseline(seed=seed).fit(*split("train", train_limit, seed))
    te_x, te_y = split("test", test_limit, data_seed)
    err = base.error(te_x, te_y)
    return {"test_error": err, "test_images": int(te_x.shape[0]), "data_seed": data_seed, **base.info,
            "seconds": time.perf_counter() - t0}
