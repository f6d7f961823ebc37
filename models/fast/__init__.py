"""The fast CPU path: the attention window, filterbanks and LSTM gates as native C loops
(`native`, built on first use, bound through one declared signature table), DRAW's training pass
as one autograd node with a hand-written backward through time (`draw_sequence`), and DRAW's
per-step fused products with deferred weight gradients (`fused`). `models.draw.DRAW.forward`
chooses between them at one dispatch point; the models' own files hold the equations."""
