"""Hand-written kernels (Pallas) for the hot spots XLA leaves memory-bound."""
