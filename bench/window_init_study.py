"""Side-by-side training curves of the two attention-window initialisations ("cover", "default").

    python -m bench.window_init_study --model classifier --cpu-seconds 150
    python -m bench.window_init_study --model draw --cpu-seconds 150

Each init trains the paper-sized model from the same seed on the same fresh training batches
(classifier: T = 8 on cluttered100; DRAW: 64 steps, 2x2/5x5 on binarized MNIST), Adam 1e-3, batch
64, clip 10, one thread, for the same process-CPU budget; the two runs alternate batch by batch in
one process so that machine load hits both alike. Prints the mean loss of every 100 (classifier)
or 20 (DRAW) steps.
"""

from __future__ import annotations

import argparse
import time

import torch


def _model(kind: str, init: str):
    if kind == "classifier":
        from models.classifier import ClassifierConfig, GlimpseClassifier

        return GlimpseClassifier(ClassifierConfig(window_init=init))
    from models.draw import DRAW, DRAWConfig

    return DRAW(DRAWConfig(window_init=init))


def study(kind: str, cpu_seconds: float, seed: int = 0, log=print) -> dict[str, list[float]]:
    from datasets.torch_data import iterate_batches

    runs = {}
    for init in ("cover", "default"):
        torch.manual_seed(seed)
        model = _model(kind, init)
        runs[init] = {"model": model, "opt": torch.optim.Adam(model.parameters(), 1e-3), "losses": [], "cpu": 0.0}
    every = 100 if kind == "classifier" else 20
    dataset = "cluttered100" if kind == "classifier" else "binarized"
    for epoch in range(10_000):
        for x, y in iterate_batches(dataset, "train", 64, seed=seed, epoch=epoch, shuffle=True):
            for init, r in runs.items():
                t = time.process_time()
                loss = r["model"].loss(x, y)[0] if kind == "classifier" else r["model"].loss(x)[0]
                r["opt"].zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(r["model"].parameters(), 10.0)
                r["opt"].step()
                r["cpu"] += time.process_time() - t
                r["losses"].append(loss.item())
            k = len(runs["cover"]["losses"])
            if k % every == 0:
                log(f"step {k}: " + ", ".join(f"{i} {sum(r['losses'][-every:]) / every:.3f} ({r['cpu']:.0f} CPU-s)"
                                              for i, r in runs.items()))
            if max(r["cpu"] for r in runs.values()) > cpu_seconds:
                return {i: r["losses"] for i, r in runs.items()}
    return {i: r["losses"] for i, r in runs.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.window_init_study", description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("classifier", "draw"), default="classifier")
    ap.add_argument("--cpu-seconds", type=float, default=150.0, help="CPU budget per init")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    study(args.model, args.cpu_seconds, args.seed)


if __name__ == "__main__":
    main()
