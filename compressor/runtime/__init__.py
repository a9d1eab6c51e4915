"""Runtime services: atomic writes, checkpoints, bounded calls, distributed training, torchrun launch."""
