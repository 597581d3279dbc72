"""Datasets (in-memory, with stable example ids) and Grain input pipelines."""
