"""The shipped rule bundles: one directory per bundle, ``bundle.yaml`` and its ``tests/``."""
