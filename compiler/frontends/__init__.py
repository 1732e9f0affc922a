"""Capture frontends: a model and example inputs in, an IR graph out."""
