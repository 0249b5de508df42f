"""Training: losses and the Trainer glue of each training notebook (train_clip today)."""
