"""lifelong: lifelong user-behaviour sequence CTR models on Ray + TorchRec."""
