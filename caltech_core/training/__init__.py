"""Training: the loop, evaluation, the frozen-feature fast path, per-image results files."""
