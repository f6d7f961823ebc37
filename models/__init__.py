"""Models: the shared selective-attention kernel, the glimpse classifier, DRAW, baselines."""
