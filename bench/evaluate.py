"""`bench eval --checkpoint PATH`: rebuild a trained model from a harness checkpoint, score it on
the test split (optionally another variant of the same size, or test data of another seed) and
write a record of suite "eval"."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import torch

from bench import checkpoints, records, suites
from bench.checkpoints import CheckpointError
from bench.records import metric
from datasets.cliargs import UsageError
from datasets.generator import SpecError
from models.common import ConfigError


def _job_and_task(kind: str, model_cfg: dict, ds: str, seed: int, limit: int | None, iwae_k: int, kw: dict):
    """The job and task that rebuild the model a checkpoint describes: its stored model config, as is
    (fields a checkpoint predates take their defaults), on dataset ``ds`` of the same image size."""
    from bench.tasks import ClassifierTask, ConvTask, DrawTask, RamTask
    from models.classifier import ClassifierConfig
    from models.draw import DRAWConfig
    from models.ram import RamConfig

    if kind == "baseline-conv":
        job = suites.BaselineJob(model="conv", dataset=ds)
        return job, ConvTask(job, seed, test_limit=limit, **kw)
    if kind == "ram":
        model = RamConfig.from_dict(model_cfg)
        job = suites.RamJob(dataset=ds, glimpses=(model.glimpses,), model=model, test_limit=limit)
        return job, RamTask(job, model.glimpses, seed, **kw)
    if kind == "classifier":
        model = ClassifierConfig.from_dict(model_cfg)
        t = model.glimpses
        job = suites.ClassifierJob(dataset=ds, glimpses=tuple(range(1, t + 1)) if model.per_step_loss else (t,),
                                   per_step_loss=model.per_step_loss, model=model, test_limit=limit)
        return job, ClassifierTask(job, t, seed, eval_glimpses=job.glimpses, **kw)
    job = suites.DrawJob(dataset=ds, model=DRAWConfig.from_dict(model_cfg), test_limit=limit, iwae_k=iwae_k,
                         iwae_limit=min(limit or 1000, 1000))
    return job, DrawTask(job, seed, **kw)


class Rebuilt(NamedTuple):
    state: dict  # the checkpoint
    task_desc: dict  # what it says it trained: task, model config, dataset, seed
    dataset: str  # the variant it is scored on
    device: str
    job: object
    task: object
    model: torch.nn.Module  # with the checkpoint's best-valid weights (or its last, for an export)


def rebuild(path: str | Path, dataset: str | None = None, data_seed: int = 0, device: str = "auto", data_dir=None,
            iwae_k: int = 1000, limit: int | None = None) -> Rebuilt:
    """The model a harness checkpoint holds, with the job and task that score it on ``dataset`` (default:
    the one it trained on; another variant of the same image size may be given). Bad input raises
    CheckpointError or UsageError naming what is wrong."""
    from datasets.variants import get_spec
    from models.training import pick_device

    state = checkpoints.load(path)
    task_desc = state.get("task")
    if isinstance(task_desc, dict) and task_desc.get("task") == "plugin":
        raise UsageError(f"{path}: a plug-in model's checkpoint; bench eval rebuilds the built-in models only "
                         "(a plug-in run scores its test split itself, in its record)")
    if not isinstance(task_desc, dict) or task_desc.get("task") not in ("classifier", "draw", "ram", "baseline-conv") \
            or not isinstance(task_desc.get("model"), dict):
        raise CheckpointError(f"{path}: not a checkpoint written by bench run (no task description)")
    dev = str(pick_device(device))
    model_cfg = task_desc["model"]
    ds = dataset or task_desc.get("dataset")
    try:
        spec = get_spec(ds)
    except SpecError as e:
        raise UsageError(f"--dataset: {e}") from None
    if (spec.height, spec.width) != (model_cfg.get("height"), model_cfg.get("width")):
        raise UsageError(f"--dataset {ds} has {spec.height}x{spec.width} images but the model was trained on "
                         f"{model_cfg.get('height')}x{model_cfg.get('width')}; choose a variant of that size")
    kw = dict(device=dev, data_dir=data_dir, data_seed=data_seed)
    try:
        job, task = _job_and_task(task_desc["task"], model_cfg, ds, task_desc["seed"], limit, iwae_k, kw)
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: its task description lacks or mangles {e}; the checkpoint is damaged "
                              "or from another version of the harness") from None
    model = task.build()
    try:
        model.load_state_dict(state.get("best_state") or state["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its weights do not fit the model it describes ({type(e).__name__}); "
                              "the checkpoint is damaged") from None
    return Rebuilt(state, task_desc, ds, dev, job, task, model)


def evaluate_checkpoint(path: str | Path, dataset: str | None = None, data_seed: int = 0, device: str = "auto",
                        data_dir=None, out: str | None = None, iwae_k: int = 1000, limit: int | None = None,
                        log: Callable[[str], None] = print, command: list[str] | None = None) -> tuple[dict, Path]:
    """Score a checkpoint on the test split; the record (suite "eval") keeps the command that made it
    (``command``: the full command line, options and all) and the limit of test images."""
    state, task_desc, ds, dev, job, task, model = rebuild(path, dataset, data_seed, device, data_dir, iwae_k, limit)
    seed = task_desc["seed"]
    torch.manual_seed(data_seed)
    machine = records.machine_info(dev)
    cfg = {"checkpoint": str(path), "task": task_desc, "dataset": ds, "data_seed": data_seed,
           "epochs_trained": state.get("epoch"), "best": state.get("best", {}).get("epoch"), "limit": limit,
           "iwae_k": iwae_k if task_desc["task"] == "draw" else None}
    command = command or ["python", "-m", "bench", "eval", "--checkpoint", str(path)]
    record = records.new_record("eval", cfg, [seed], machine, command)
    common = {"dataset": ds, "data_seed": data_seed, "checkpoint": Path(path).name}
    if task_desc["task"] == "baseline-conv":
        res = task.evaluate(model, "test")
        record["metrics"] = [metric("test_error", res["error"], "fraction", True, seed, glimpses=None,
                                    protocol="baseline-conv", test_images=res["images"], **common)]
        log(f"test error {res['error']:.2%} on {res['images']} images of {ds} (seed {data_seed})")
    elif task_desc["task"] in ("classifier", "ram"):
        res = task.evaluate(model, "test")
        protocol = "per-step" if getattr(job, "per_step_loss", False) else "separate"
        common.update(task.metric_params(model))
        record["metrics"] = [metric("test_error", res[f"error@{t}"], "fraction", True, seed, glimpses=t,
                                    protocol=protocol, test_images=res["images"], **common)
                             for t in task.eval_glimpses]
        log(f"test error at T={task.glimpses}: {res['error']:.2%} on {res['images']} images of {ds} (seed {data_seed})")
    else:
        res = task.evaluate(model, "test")
        iw = task.iwae(model, iwae_k, job.iwae_limit)
        base = dict(attention=job.model.attention, steps=job.model.steps, **common, **task.metric_params(model))
        record["metrics"] = [
            metric("nll_elbo", res["nll_elbo"], "nats", True, seed, test_images=res["images"], **base),
            metric("kl", res["kl"], "nats", None, seed, test_images=res["images"], **base),
            metric("reconstruction", res["reconstruction"], "nats", None, seed, test_images=res["images"], **base),
            metric("nll_iwae", iw["nll_iwae"], "nats", True, seed, k=iwae_k, test_images=iw["images"], **base),
            metric("nll_elbo_mc", iw["nll_elbo_mc"], "nats", True, seed, k=iwae_k, test_images=iw["images"], **base)]
        log(f"test NLL <= {res['nll_elbo']:.2f} (ELBO), <= {iw['nll_iwae']:.2f} (IWAE k={iwae_k})")
    record["status"], record["finished_at"] = "complete", records.utc_now()
    dest = records.write(record, Path(out)) if out else records.claim(record, records.default_path(record))
    records.update_index(dest, record)  # the index of the place holding dest (runs/ or results/), if any
    return record, dest
