"""Training: the trainer, the yolo loss, the optimizer and schedules, checkpoints, anchors and starter cfgs."""
