"""moerules benchmarks: `python -m benchmarks` (or `moerules bench`)."""
