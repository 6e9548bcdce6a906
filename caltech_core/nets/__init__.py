"""Networks: the architecture table, the ensemble, model building, ImageNet weights, checkpoint files."""
