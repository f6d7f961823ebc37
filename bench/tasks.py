"""What the training loop trains: the glimpse classifier, DRAW and the conv-net baseline, each as a
Task (build, batches, loss, evaluate). Evaluation is `no_grad`, streams the split in batches and never changes the
model's train/eval mode for the caller.

Data seeds: training data of run seed s is epoch e's fresh set of seed s; valid and test are the
fixed sets of `data_seed` (0 unless `bench eval --seed` asks for other test clutter).
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import torch

from bench.distributed import all_reduce_sum, example_noise, per_rank_batch, positions
from bench.optim import Optim
from models.bounds import elbo_bound, eval_mode, iwae_bound
from datasets.torch_data import iterate_batches
from datasets.variants import get_spec

EVAL_BATCH = 500


def cost_params(model, attention_type: str) -> dict:
    """Attention type (soft, hard, none), parameters and forward FLOPs per image, for every metric row."""
    count_fn, flops_fn = getattr(model, "param_count", None), getattr(model, "flops_per_image", None)
    count = count_fn() if callable(count_fn) else sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"attention_type": attention_type, "param_count": int(count),
            "flops_per_image": flops_fn() if callable(flops_fn) else None}


class _Base:
    def __init__(self, job, seed: int, device: str = "cpu", data_dir=None, rank: int = 0, world_size: int = 1,
                 data_seed: int = 0):
        self.job, self.seed, self.device, self.data_dir = job, seed, device, data_dir
        self.rank, self.world_size, self.data_seed = rank, world_size, data_seed
        spec = get_spec(job.dataset)
        self.height, self.width = spec.height, spec.width

    def _shard(self):
        return (self.rank, self.world_size) if self.world_size > 1 else None

    def model_description(self) -> dict:
        return asdict(self.config())

    def describe(self) -> dict:
        """What a checkpoint must match to be resumed: the model built, the data and the optimiser
        (a schedule, betas or policy rate only when not the default, as checkpoints made before them
        have none)."""
        j, o = self.job, self.job.optim
        return {"task": j.kind, "dataset": j.dataset, "seed": self.seed, "model": self.model_description(),
                "batch_size": o.batch_size, "lr": o.lr, "train_limit": j.train_limit, "valid_limit": j.valid_limit,
                **({"schedule": asdict(self.schedule())} if self.schedule().kind != "constant" else {}),
                **({"betas": list(o.betas)} if o.betas != Optim().betas else {}),
                **({"policy_lr_scale": o.policy_lr_scale} if o.policy_lr_scale != 1.0 else {})}

    def schedule(self):
        return self.job.optim.lr_schedule()

    def batches_per_epoch(self) -> int:
        from datasets.variants import SPLITS

        _, lo, hi = SPLITS["train"]
        n = hi - lo if self.job.train_limit is None else min(self.job.train_limit, hi - lo)
        return max(n // self.job.optim.batch_size, 1)

    def build(self):
        from models.training import seed_everything

        seed_everything(self.seed)
        return self.model_class()(self.config()).to(self.device)

    def batches(self, epoch: int):
        return iterate_batches(self.job.dataset, "train", per_rank_batch(self.job.optim.batch_size, self.world_size),
                               seed=self.seed, epoch=epoch, shuffle=True, device=self.device, data_dir=self.data_dir,
                               drop_last=True, limit=self.job.train_limit, shard=self._shard())

    def positioned_batches(self, epoch: int, stream: str):
        """(x, y, where): ``where`` keys each example's noise of ``stream`` by its epoch position, so
        the noise, like the data, is the same on any world size."""
        b = per_rank_batch(self.job.optim.batch_size, self.world_size)
        for k, (x, y) in enumerate(_Base.batches(self, epoch)):
            yield x, y, ((stream, self.seed, epoch), positions(k * b, x.shape[0], self._shard()))

    def noise_rows(self, where, shape: tuple[int, ...]) -> torch.Tensor:
        """Keyed noise of ``shape`` = (samples, steps, width) per example, as (steps, examples * samples,
        width), each example's samples next to each other."""
        key, pos = where
        return example_noise(key, pos, shape, self.device).flatten(0, 1).transpose(0, 1).contiguous()

    def eval_batches(self, split: str, limit: int | None):
        # sharded under DDP; callers reduce the sums with all_reduce_sum
        return iterate_batches(self.job.dataset, split, EVAL_BATCH, seed=self.data_seed, device=self.device,
                               data_dir=self.data_dir, limit=limit, shard=self._shard())

    def limit(self, split: str) -> int | None:
        return self.job.valid_limit if split == "valid" else self.job.test_limit

    @staticmethod
    def batch_images(batch) -> int:
        return int(batch[0].shape[0])


class ClassifierTask(_Base):
    """One glimpse classifier with ``glimpses`` steps; evaluate reports the error at every T of
    ``eval_glimpses`` (each T <= glimpses) as ``error@T`` and the final one as ``error``."""

    select = "error"

    def __init__(self, job, glimpses: int, seed: int, eval_glimpses: tuple[int, ...] | None = None, **kw):
        super().__init__(job, seed, **kw)
        self.glimpses = glimpses
        self.eval_glimpses = tuple(eval_glimpses or (glimpses,))

    def config(self):
        """The job's model config with what the data and this unit decide: image size, T, loss protocol."""
        return replace(self.job.model, height=self.height, width=self.width, channels=1, glimpses=self.glimpses,
                       per_step_loss=self.job.per_step_loss)

    def model_class(self):
        from models.classifier import GlimpseClassifier

        return GlimpseClassifier

    def loss(self, model, batch):
        return model.loss(batch[0], batch[1])[0]

    def metric_params(self, model) -> dict:
        """What every metric of this model carries: the model, its attention type and its cost."""
        m = self.job.model
        return {"model": "classifier", "read_n": m.read_n, "hidden": m.hidden,
                **cost_params(model, "soft" if m.attention else "none")}

    def evaluate(self, model, split: str, limit: int | None = -1) -> dict[str, float]:
        limit = self.limit(split) if limit == -1 else limit
        wrong, n = torch.zeros(self.glimpses, dtype=torch.long, device=self.device), 0
        with eval_mode(model):
            for x, y in self.eval_batches(split, limit):
                pred = model(x, keep_windows=False).logits.argmax(-1)  # (B, T)
                w = (pred != y[:, None]).sum(0)
                wrong = w if wrong is None else wrong + w
                n += x.shape[0]
        wrong, n = all_reduce_sum(wrong), int(all_reduce_sum(torch.tensor([n])).item())
        err = (wrong.double() / n).cpu()
        out = {f"error@{t}": float(err[t - 1]) for t in self.eval_glimpses}
        out["error"] = float(err[-1])
        out["images"] = n
        return out

    def _path_images(self, count: int):
        return next(iter(iterate_batches(self.job.dataset, "test", count, seed=self.data_seed, device=self.device,
                                         data_dir=self.data_dir, limit=count)))

    def glimpse_paths(self, model, count: int = 8) -> dict[str, np.ndarray]:
        """Windows (gx, gy, delta, sigma2 per step) on the first ``count`` test images, for the report."""
        x, y = self._path_images(count)
        with eval_mode(model):
            out = model(x, keep_windows=True)
        arrays = {"images": (x[:, 0].cpu().numpy() * 255).round().astype(np.uint8), "labels": y.cpu().numpy(),
                  "predictions": out.logits.argmax(-1).cpu().numpy(), "read_n": np.array(self.job.model.read_n)}
        if out.windows:
            for k in ("gx", "gy", "delta", "sigma2"):
                arrays[k] = torch.stack([getattr(w, k) for w in out.windows], 1).cpu().numpy().astype(np.float32)
        return arrays


class DrawTask(_Base):
    """DRAW on a (binarized) image variant; the loss and the bounds are in nats per image."""

    select = "nll_elbo"

    def config(self):
        """The job's model config at the dataset's image size."""
        return replace(self.job.model, height=self.height, width=self.width, channels=1)

    def model_class(self):
        from models.draw import DRAW

        return DRAW

    def batches(self, epoch: int):
        return self.positioned_batches(epoch, "train")

    def noise(self, where, samples: int = 1) -> torch.Tensor:
        """(T, len(pos) * samples, z) posterior noise, image-major, a function of (key, position)."""
        return self.noise_rows(where, (samples, self.job.model.steps, self.job.model.z_size))

    def loss(self, model, batch):
        return model.loss(batch[0], self.noise(batch[2]) if len(batch) > 2 else None)[0]

    def metric_params(self, model) -> dict:
        """The attention type and cost, and how the images were binarized: the test split once, fixed by
        its seed; the training images afresh each epoch (the dataset's fresh_train), or once."""
        spec = get_spec(self.job.dataset)
        if not spec.binarize:
            binarized = {"binarization": "none"}  # grey levels as Bernoulli targets
        else:
            binarized = {"binarization": "fixed", "train_binarization": "fresh per epoch" if spec.fresh_train
                         else "fixed"}
        return {**cost_params(model, "soft" if self.job.model.attention else "none"), **binarized}

    def _keyed_noise(self, key: tuple):
        """models.bounds NoiseFn: the noise of each image is a function of (key, its position in the
        whole split), so the bounds are the same on any number of processes."""
        return lambda start, count, samples: self.noise((key, positions(start, count, self._shard())), samples)

    def evaluate(self, model, split: str, limit: int | None = -1) -> dict[str, float]:
        """The ELBO bound (one posterior sample per image) with its KL and reconstruction parts."""
        limit = self.limit(split) if limit == -1 else limit
        r = elbo_bound(model, self.eval_batches(split, limit), device=self.device,
                       noise=self._keyed_noise(("eval", self.data_seed, split)), reduce=all_reduce_sum)
        return {"nll_elbo": r["nll_elbo"], "kl": r["kl"], "reconstruction": r["reconstruction"],
                "images": r["n_images"]}

    def iwae(self, model, k: int, limit: int | None, progress: bool = False) -> dict[str, float]:
        """-log p(x) <= -E log (1/k) sum_i p(x, z_i) / q(z_i | x), averaged over the test images."""
        r = iwae_bound(model, self.eval_batches("test", limit), k=k, device=self.device, progress=progress,
                       total=limit, noise=self._keyed_noise(("iwae", self.data_seed, k)), reduce=all_reduce_sum)
        return {"nll_iwae": r["nll_iwae"], "nll_elbo_mc": r["nll_elbo_mc"], "images": r["n_images"]}

    def samples(self, model, count: int) -> np.ndarray:
        """(T, count, H, W) uint8: the canvas after every step of ``count`` images from the prior."""
        g = torch.Generator(device=self.device).manual_seed(self.seed)
        with eval_mode(model):
            seq = model.generate(count, generator=g)
        return (seq[:, :, 0].cpu().numpy() * 255).round().astype(np.uint8)


class ConvTask(_Base):
    """The 2-layer conv-net baseline (models/baselines.py) on a single-digit variant: cross-entropy
    on fresh clutter every epoch, ``error`` on valid (model selection) and test. A BaselineJob gives
    the dataset, epochs, time budget and train_limit; batch size and learning rate are arguments
    (neither paper gives them)."""

    select = "error"

    def __init__(self, job, seed: int, batch_size: int = 64, lr: float = 1e-3, valid_limit: int | None = None,
                 test_limit: int | None = None, **kw):
        super().__init__(job, seed, **kw)
        spec = get_spec(job.dataset)
        if getattr(spec, "n_digits", 1) != 1:
            raise ValueError(f"baseline {job.model!r}: {job.dataset!r} has {spec.n_digits} digits per image; the "
                             "classification baselines need a single-digit variant (cluttered100, cluttered60, "
                             "translated60)")
        self.batch_size, self.lr, self.valid_limit, self.test_limit = batch_size, lr, valid_limit, test_limit

    def describe(self) -> dict:
        j = self.job
        return {"task": "baseline-conv", "dataset": j.dataset, "seed": self.seed, "model": asdict(self.config()),
                "batch_size": self.batch_size, "lr": self.lr, "train_limit": j.train_limit,
                "valid_limit": self.valid_limit}

    def config(self):
        from models.baselines import ConvNetConfig

        return ConvNetConfig(height=self.height, width=self.width)

    def model_class(self):
        from models.baselines import ConvNet

        return ConvNet

    def batches_per_epoch(self) -> int:
        from datasets.variants import SPLITS

        _, lo, hi = SPLITS["train"]
        n = hi - lo if self.job.train_limit is None else min(self.job.train_limit, hi - lo)
        return max(n // self.batch_size, 1)

    def batches(self, epoch: int):
        return iterate_batches(self.job.dataset, "train", per_rank_batch(self.batch_size, self.world_size),
                               seed=self.seed, epoch=epoch, shuffle=True, device=self.device, data_dir=self.data_dir,
                               drop_last=True, limit=self.job.train_limit, shard=self._shard())

    def limit(self, split: str) -> int | None:
        return self.valid_limit if split == "valid" else self.test_limit

    def loss(self, model, batch):
        return model.loss(batch[0], batch[1])[0]

    def evaluate(self, model, split: str) -> dict[str, float]:
        wrong, n = torch.zeros(1, dtype=torch.long, device=self.device), 0
        with eval_mode(model):
            for x, y in self.eval_batches(split, self.limit(split)):
                wrong += (model.predict(x) != y).sum()
                n += x.shape[0]
        wrong, n = all_reduce_sum(wrong), int(all_reduce_sum(torch.tensor([n])).item())
        return {"error": float(wrong.item()) / n, "images": n}


# ---------------------------------------------------------------- hard attention (RAM) and plug-in glimpse models

class RamTask(ClassifierTask):
    """RAM with ``glimpses`` steps. Training samples the locations with noise keyed by each image's
    place in the epoch (and its episode), so that it is the same on any number of processes, as the
    data is; evaluation (eval mode) takes the location policy's mean."""

    def config(self):
        """The job's model config with the dataset's image size and this unit's T."""
        return replace(self.job.model, height=self.height, width=self.width, channels=1, glimpses=self.glimpses)

    def model_class(self):
        from models.ram import RecurrentAttentionModel

        return RecurrentAttentionModel

    def batches(self, epoch: int):
        return self.positioned_batches(epoch, "ram-locations")

    def noise(self, where) -> torch.Tensor:
        """(T, len(pos) * samples, 2) location noise, each image's episodes next to each other."""
        return self.noise_rows(where, (self.job.model.samples, self.glimpses, 2))

    def loss(self, model, batch):
        return model.loss(batch[0], batch[1], self.noise(batch[2]) if len(batch) > 2 else None)[0]

    def metric_params(self, model) -> dict:
        m = self.job.model
        return {"model": "ram", "patch": m.patch, "scales": m.scales, "hidden": m.hidden, "location": "mean",
                **cost_params(model, "hard")}

    def glimpse_paths(self, model, count: int = 8) -> dict[str, np.ndarray]:
        """Each glimpse's smallest patch (centre gx, gy in 1-based pixels; delta 1 with read_n = its side)."""
        x, y = self._path_images(count)
        with eval_mode(model):
            out = model(x, keep_windows=True)
        boxes = model.glimpse_boxes(out.locations)
        return {"images": (x[:, 0].cpu().numpy() * 255).round().astype(np.uint8), "labels": y.cpu().numpy(),
                "predictions": out.logits.argmax(-1).cpu().numpy(), "read_n": np.array(self.job.model.patch),
                "gx": boxes["gx"].cpu().numpy().astype(np.float32), "gy": boxes["gy"].cpu().numpy().astype(np.float32),
                "delta": np.ones(tuple(out.locations.shape[:2]), dtype=np.float32)}


class PluginTask(ClassifierTask):
    """A user's glimpse model (bench/plugins.py): built from ``job.model``, trained with its own loss
    (or the cross-entropy), evaluated and recorded like the glimpse classifier."""

    def config(self) -> dict:
        return {"height": self.height, "width": self.width, "channels": 1, "num_classes": 10,
                "glimpses": self.glimpses, "per_step_loss": self.job.per_step_loss}

    def model_description(self) -> dict:
        return {"plugin": self.job.model, **self.config()}

    def build(self):
        from bench import plugins
        from models.training import seed_everything

        seed_everything(self.seed)
        return plugins.build(self.job.model, self.config()).to(self.device)

    def metric_params(self, model) -> dict:
        return {"model": self.job.model, **cost_params(model, model.attention_type)}

    def glimpse_paths(self, model, count: int = 8) -> dict[str, np.ndarray]:
        """Windows given as (B, T, 3) = (centre x, centre y, side) in 0-based pixels, when the model gives them."""
        x, y = self._path_images(count)
        with eval_mode(model):
            out = model(x, keep_windows=True)
        arrays = {"images": (x[:, 0].cpu().numpy() * 255).round().astype(np.uint8), "labels": y.cpu().numpy(),
                  "predictions": out.logits.argmax(-1).cpu().numpy()}
        w = out.windows
        if torch.is_tensor(w) and w.dim() == 3 and w.shape[:2] == out.logits.shape[:2] and w.shape[2] == 3:
            w = w.detach().float().cpu().numpy()
            arrays.update(gx=w[..., 0] + 1, gy=w[..., 1] + 1, delta=w[..., 2], read_n=np.array(1))
        return arrays
