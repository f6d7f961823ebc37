"""The benchmark harness: `python -m bench run | compare | report | eval`."""
