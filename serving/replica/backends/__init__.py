"""Model backends: the computation a model replica runs for one batch of equal-knob requests."""
