"""Where a glimpse model's errors come from: the digit never found, or found and misread.

    python -m bench.attention_errors CHECKPOINT ... [--split valid|test] [--limit N] [--data-seed S] [--probe]
                                     [--json OUT]

For a checkpoint of the glimpse classifier (soft attention) or of RAM (hard attention) on a
single-digit variant, each glimpse's centre is set against the centre of the digit, which the
generator's layout records. Per step: the error so far, the mean distance from the glimpse centre to
the digit centre, and the share of glimpses centred on the digit's 28 x 28 box. Then the final
errors split in two: the last glimpse off the digit's box (the attention failed) or on it (the digit
was found and misread), with the error rate of each group, and how many misread digits an earlier
glimpse had read right. For the classifier, what each step reads: the medians of its window's span
and stride, filter sigma (and sigma per stride: under about 0.5 the grid samples points rather than
averaging between them), intensity and how far it moved. The classifier's centre is its grid
centre (gx, gy); RAM's is its patch centre at the policy's mean location. ``--probe`` adds how much of
where the digit is the model's recurrent state holds after each glimpse (bench/location_probe.py).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from datasets.generator import DIGIT

EVAL_BATCH = 500


def decompose(pred: np.ndarray, labels: np.ndarray, centres: np.ndarray, digit_xy: np.ndarray,
              windows: dict[str, np.ndarray] | None = None, read_n: int | None = None) -> dict:
    """pred (N, T) classes after each glimpse; labels (N,); centres (N, T, 2) glimpse centres (x, y) in
    1-based pixels (models/attention.py); digit_xy (N, 2) the digit's top-left corner, 0-based.
    ``windows``: the soft-attention windows' stride ``delta``, ``sigma2`` and ``gamma``, each (N, T),
    for the grid of ``read_n`` x ``read_n`` filters: what each step reads (medians over the images)."""
    n, steps = pred.shape
    wrong = pred != labels[:, None]  # (N, T)
    centre = digit_xy[:, None, :] + (DIGIT + 1) / 2  # 1-based pixels: the box spans x0 + 1 .. x0 + DIGIT
    offset = centres - centre
    distance = np.sqrt((offset ** 2).sum(-1))  # (N, T)
    on_digit = (np.abs(offset) <= DIGIT / 2).all(-1)  # (N, T)
    last_wrong, last_on = wrong[:, -1], on_digit[:, -1]
    errors = int(last_wrong.sum())

    def rate(mask):
        return float(last_wrong[mask].mean()) if mask.any() else None

    per_step = [{"step": t + 1, "error": float(wrong[:, t].mean()), "mean_distance_px": float(distance[:, t].mean()),
                 "on_digit": float(on_digit[:, t].mean())} for t in range(steps)]
    misread = last_wrong & last_on
    if windows is not None:
        moved = np.sqrt((np.diff(centres, axis=1) ** 2).sum(-1))  # (N, T - 1): how far each glimpse moved
        sigma = np.sqrt(windows["sigma2"])
        for t, p in enumerate(per_step):
            p.update(stride_px=float(np.median(windows["delta"][:, t])),
                     span_px=float(np.median(windows["delta"][:, t] * (read_n - 1))),
                     sigma_px=float(np.median(sigma[:, t])),
                     sigma_per_stride=float(np.median(sigma[:, t] / windows["delta"][:, t])),
                     gamma=float(np.median(windows["gamma"][:, t])),
                     moved_px=float(np.median(moved[:, t - 1])) if t else None)
    return {
        "images": n, "glimpses": steps, "error": float(last_wrong.mean()),
        "per_step": per_step,
        "last_on_digit": float(last_on.mean()), "ever_on_digit": float(on_digit.any(1).mean()),
        "error_when_last_on_digit": rate(last_on), "error_when_last_off_digit": rate(~last_on),
        "errors": errors,
        # the two causes as shares of all errors: attention failed (off the digit) or misread (on it)
        "errors_off_digit": float((last_wrong & ~last_on).sum() / errors) if errors else None,
        "errors_on_digit": float((last_wrong & last_on).sum() / errors) if errors else None,
        # misread digits that an earlier glimpse had read right: the reading was lost, not never had
        "misread_right_earlier": float((pred[misread][:, :-1] == labels[misread][:, None]).any(1).mean())
        if misread.any() and steps > 1 else None,
    }


WINDOW_FIELDS = ("delta", "sigma2", "gamma")


def glimpse_centres(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
    """Predictions (B, T) and glimpse centres (B, T, 2) of the classifier or RAM, in evaluation mode, and
    for the classifier its windows' ``WINDOW_FIELDS``, each (B, T) (None for RAM: its patches are fixed)."""
    from models.ram import RecurrentAttentionModel

    if isinstance(model, RecurrentAttentionModel):
        out = model(x, keep_windows=True, sample=False)
        boxes = model.glimpse_boxes(out.locations)
        return out.logits.argmax(-1), torch.stack([boxes["gx"], boxes["gy"]], -1), None
    out = model(x, keep_windows=True)
    if not out.windows:
        from datasets.cliargs import UsageError

        raise UsageError("this classifier has no attention windows (attention off): nothing to locate")
    steps = {f: torch.stack([getattr(w, f).reshape(-1) for w in out.windows], 1) for f in ("gx", "gy", *WINDOW_FIELDS)}
    return out.logits.argmax(-1), torch.stack([steps["gx"], steps["gy"]], -1), {f: steps[f] for f in WINDOW_FIELDS}


def analyse(checkpoint: str, split: str = "valid", limit: int | None = 10_000, data_seed: int = 0,
            device: str = "cpu", data_dir=None, probe: bool = False) -> dict:
    """The decomposition on the first ``limit`` images of ``split`` (the fixed validation or test set of
    ``data_seed``), for the model in ``checkpoint``; with ``probe``, the linear location probes too."""
    from bench import location_probe
    from bench.evaluate import rebuild
    from datasets.cliargs import UsageError
    from datasets.torch_data import iterate_batches
    from datasets.variants import plan_split

    built = rebuild(checkpoint, data_seed=data_seed, device=device, data_dir=data_dir)
    kind = built.task_desc["task"]
    if kind not in ("classifier", "ram"):
        raise UsageError(f"{checkpoint}: a {kind} checkpoint; this analysis takes the glimpse classifier or RAM")
    spec, plan, _ = plan_split(built.dataset, split, data_seed, None, data_dir)
    if spec.n_digits != 1:
        raise UsageError(f"{built.dataset} has {spec.n_digits} digits per image; the analysis needs one")
    n = len(plan) if limit is None else min(limit, len(plan))
    preds, centres, labels, windows, retinas = [], [], [], [], []
    built.model.eval()
    states = location_probe.StateRecorder(built.model) if probe else None
    with torch.no_grad():  # unshuffled, the batches visit the split's first n examples in order
        for x, y in iterate_batches(built.dataset, split, EVAL_BATCH, seed=data_seed, device=built.device,
                                    data_dir=data_dir, limit=n):
            if probe and kind == "ram":
                retinas.append(location_probe.first_retina(built.model, x))
            pred, centre, window = glimpse_centres(built.model, x)
            preds.append(pred.cpu().numpy())
            centres.append(centre.cpu().numpy())
            labels.append(y.cpu().numpy())
            windows.append(window)
    labels = np.concatenate(labels)
    assert np.array_equal(labels, plan.labels[:n]), "the batches left the split's order"
    soft = windows[0] is not None
    centres = np.concatenate(centres).astype(np.float64)
    digit_xy = np.asarray(plan.digit_xy[:n, 0], dtype=np.float64)
    result = decompose(np.concatenate(preds), labels, centres, digit_xy,
                       {f: np.concatenate([w[f].cpu().numpy() for w in windows]).astype(np.float64)
                        for f in WINDOW_FIELDS} if soft else None,
                       built.model.config.read_n if soft else None)
    if probe:
        result["probe"] = location_probe.probe(states.take(), centres, digit_xy + (DIGIT + 1) / 2,
                                               np.concatenate(retinas) if retinas else None)
    return {"checkpoint": str(checkpoint), "model": kind, "dataset": built.dataset, "split": split,
            "data_seed": data_seed, "epoch": built.state.get("epoch"), "images_seen": built.state.get("images_seen"),
            "best_epoch": (built.state.get("best") or {}).get("epoch"), **result}


def format_result(r: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    soft = "stride_px" in r["per_step"][0]
    lines = [f"{r['checkpoint']}: {r['model']} on {r['dataset']} {r['split']} (seed {r['data_seed']}), "
             f"{r['images']:,} images, error {pct(r['error'])} after {r['glimpses']} glimpses",
             "step | error so far | mean distance to the digit centre (px) | glimpse centred on the digit"
             + (" | window, medians: span px, stride px, sigma px, sigma/stride, gamma, moved px" if soft else "")]
    for p in r["per_step"]:
        line = f"{p['step']:>4} | {pct(p['error']):>12} | {p['mean_distance_px']:>38.1f} | {pct(p['on_digit']):>28}"
        if soft:
            moved = "-" if p["moved_px"] is None else f"{p['moved_px']:.1f}"
            line += (f" | {p['span_px']:.1f}, {p['stride_px']:.2f}, {p['sigma_px']:.2f}, {p['sigma_per_stride']:.2f}, "
                     f"{p['gamma']:.2f}, {moved}")
        lines.append(line)
    lines.append(f"last glimpse on the digit for {pct(r['last_on_digit'])} of images (any glimpse: "
                 f"{pct(r['ever_on_digit'])}); error {pct(r['error_when_last_on_digit'])} when on it, "
                 f"{pct(r['error_when_last_off_digit'])} when off it")
    if r["errors"]:
        lines.append(f"of the {r['errors']} errors, {pct(r['errors_off_digit'])} ended off the digit (attention "
                     f"failed) and {pct(r['errors_on_digit'])} on it (found, misread)")
    if r.get("misread_right_earlier") is not None:
        lines.append(f"{pct(r['misread_right_earlier'])} of the misread digits had been read right after an "
                     "earlier glimpse")
    if r.get("probe"):
        pr = r["probe"]
        lines.append("where the digit is, R^2 per step (1: exactly; 0: no better than the mean centre): "
                     "linear readout of the state h_t on held-out images | the glimpse centre itself")
        lines += [f"{t + 1:>4} | {a:.3f} | {b:.3f}" for t, (a, b) in enumerate(zip(pr["state_r2"], pr["glimpse_r2"]))]
        if pr["first_retina_r2"] is not None:
            lines.append(f"linear readout of the first glimpse's retina: R^2 {pr['first_retina_r2']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.checkpoints import CheckpointError
    from datasets.cliargs import EXIT_USAGE, OneLineParser, UsageError, integer

    p = OneLineParser(prog="python -m bench.attention_errors", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", metavar="checkpoint", help="classifier or RAM checkpoints written by "
                                                                       "bench run")
    p.add_argument("--split", choices=("valid", "test"), default="valid")
    p.add_argument("--limit", type=integer(1), default=10_000, help="the first N images of the split (default 10,000)")
    p.add_argument("--data-seed", type=integer(0), default=0, help="the clutter seed of the split (default 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--probe", action="store_true", help="also fit linear probes of where the digit is: from the "
                                                        "recurrent state after each glimpse and, for RAM, from its "
                                                        "first glimpse (bench/location_probe.py)")
    p.add_argument("--json", help="also write the results here as a run record (JSON: command, commit, machine, "
                                  "metrics, every figure under results)")
    args = p.parse_args(argv)
    results = []
    try:
        for path in args.checkpoints:
            results.append(analyse(path, args.split, args.limit, args.data_seed, args.device, probe=args.probe))
            print(format_result(results[-1]) + "\n")
    except (CheckpointError, UsageError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        from bench import records

        records.write(as_record(results, vars(args), argv if argv is not None else sys.argv[1:]), args.json)
    return 0


def as_record(results: list[dict], options: dict, argv: list[str]) -> dict:
    """A run record (bench/records.py) of the analysis: per checkpoint its final error, the share of images
    whose last glimpse was on the digit and the share of errors off it as metrics, every figure under
    ``results``."""
    from bench import records
    from bench.records import metric

    record = records.new_record("attention-errors", {"options": options}, [],
                                records.machine_info(options.get("device", "cpu"), threads=1),
                                ["python", "-m", "bench.attention_errors", *argv])
    for r in results:
        common = dict(checkpoint=r["checkpoint"], model=r["model"], dataset=r["dataset"], split=r["split"],
                      data_seed=r["data_seed"], glimpses=r["glimpses"], images=r["images"])
        record["metrics"] += [
            metric(f"{r['split']}_error", r["error"], "fraction", True, None, **common),
            metric("last_glimpse_on_digit", r["last_on_digit"], "fraction", False, None, **common),
            metric("errors_off_digit", r["errors_off_digit"], "fraction", None, None, **common)]
    record.update(results=results, status="complete", finished_at=records.utc_now())
    return record


if __name__ == "__main__":
    sys.exit(main())
