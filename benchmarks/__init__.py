"""moerules benchmarks: `python -m moerules.benchmarks` (or `moerules bench`)."""
