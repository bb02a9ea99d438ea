"""Training: the LightningModule (:mod:`.module`, the training step) and what runs around it
in Lightning: callbacks, LR schedules, stopping and ``last.ckpt``, resuming, run dirs, logs."""
