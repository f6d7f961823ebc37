"""Straightforward implementations written from the papers' equations, used as references: float64
parity in the tests, and the baseline of the speed measurements. No model trains through them."""
