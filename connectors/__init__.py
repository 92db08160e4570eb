"""Connectors: one module per partner or medium; each a source, a sink, or both."""
