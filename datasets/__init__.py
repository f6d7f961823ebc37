"""MNIST-derived benchmark data: acquisition, generators, loaders.

This top-level package is named ``datasets`` and shadows the Hugging Face package of the
same name inside this project's environment; run from the repository root or a venv
made for this project.
"""
