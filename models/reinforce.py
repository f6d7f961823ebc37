"""The score-function (REINFORCE) estimator with a learned baseline (Williams 1992; RAM sec. 4).

For a policy pi_theta(a) and a reward R(a), grad E[R] = E[(R - b) grad log pi_theta(a)] for any b
that does not depend on a. ``reinforce_loss`` is a surrogate whose gradient is minus one such
estimate per sample (averaged over the batch), so minimising it ascends the expected reward.
"""

from __future__ import annotations

import math

import torch


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log N(sample; mean, std^2 I), summed over the last axis (the sample is a constant)."""
    z = (sample.detach() - mean) / std
    return (-0.5 * z * z - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def reinforce_loss(log_probs: torch.Tensor, reward: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """-(R - b) * sum_t log pi_t, averaged over the batch; no gradient reaches R or b through it.

    log_probs (B, T): log-probability of each step's sampled action; reward (B,); baseline (B, T).
    """
    advantage = (reward[:, None] - baseline).detach()
    return -(advantage * log_probs).sum(1).mean()


def baseline_loss(reward: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the baseline (B, T) against the reward (B,): b_t learns E[R | h_t]."""
    return ((reward[:, None].detach() - baseline) ** 2).mean()
