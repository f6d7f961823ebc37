"""Published figures the report overlays (from docs ANCHORS.md; "unconfirmed" as marked there).

Errors are fractions; NLL in nats per image on binarized MNIST.
"""

from __future__ import annotations

# DRAW paper, Table 1: 100 x 100 cluttered translated MNIST, test error.
TABLE1 = [
    {"model": "Convolutional, 2 layers", "glimpses": None, "error": 0.1435, "confirmed": False},
    {"model": "RAM, 12x12, 4 scales", "glimpses": 4, "error": 0.0941, "confirmed": False},
    {"model": "RAM, 12x12, 4 scales", "glimpses": 8, "error": 0.0811, "confirmed": False},
    {"model": "Differentiable RAM, 12x12", "glimpses": 4, "error": 0.0418, "confirmed": False},
    {"model": "Differentiable RAM, 12x12", "glimpses": 8, "error": 0.0336, "confirmed": True},
]

# RAM paper (NIPS 2014), 60 x 60 variants, test error.
RAM_60 = {
    "cluttered60": [{"model": "RAM", "glimpses": 4, "error": 0.0496}, {"model": "RAM", "glimpses": 6, "error": 0.0408},
                    {"model": "RAM", "glimpses": 8, "error": 0.0404},
                    {"model": "Convolutional net", "glimpses": None, "error": 0.0809}],
    "translated60": [{"model": "RAM", "glimpses": 4, "error": 0.0154}, {"model": "RAM", "glimpses": 6, "error": 0.0122},
                     {"model": "RAM", "glimpses": 8, "error": 0.0120}],
}

# DRAW paper, Table 2: binarized MNIST test NLL (nats), "<=" marks a variational bound.
TABLE2 = [
    {"model": "DRAW (read 2x2, write 5x5, 64 steps)", "nll": 80.97, "bound": True, "attention": True,
     "confirmed": True},
    {"model": "DRAW without attention", "nll": 87.40, "bound": True, "attention": False, "confirmed": False},
    {"model": "DARN 1hl", "nll": 84.13, "bound": False, "confirmed": True},
    {"model": "DBN 2hl", "nll": 84.55, "bound": False, "confirmed": True},
    {"model": "EoNADE-5 2hl", "nll": 84.68, "bound": False, "confirmed": True},
    {"model": "DLGM 8 leapfrog steps", "nll": 85.51, "bound": False, "confirmed": True},
    {"model": "NADE", "nll": 88.33, "bound": False, "confirmed": True},
]

UNTRAINED_NLL = 543.0  # nats: 784 pixels at p = 0.5 is 543.4


def error_points(dataset: str) -> list[dict]:
    """Published (model, glimpses, error) points for a dataset, for the error-vs-glimpses plot."""
    if dataset == "cluttered100":
        return TABLE1
    return RAM_60.get(dataset, [])
