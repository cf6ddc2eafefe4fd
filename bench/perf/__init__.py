"""Side-by-side benchmarks (`bench perf trainer|eval|data|gpu`): ratios measured in one run."""
