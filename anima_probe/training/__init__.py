"""Training machinery: the shared loop (resumable checkpoints, EMA, logs) and the distillation of a modulation source."""
