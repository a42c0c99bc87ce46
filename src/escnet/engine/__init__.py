"""Engine: the training loop and cross-validation, evaluation, and the multi-model benchmark."""
