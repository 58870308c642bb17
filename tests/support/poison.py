"""A loader whose batches carry a NaN from some iteration on: how the tests make a training step non-finite."""

import numpy as np


def poison_batches(trainer, from_iteration: int = 1):
    """Make `trainer`'s loader put a NaN into the first image of every batch from `from_iteration` on; returns the
    loader's own batch function (assign it back to cure the loader)."""
    real_batch = trainer.loader.batch

    def poisoned(iteration, width=None, height=None):
        images, truths = real_batch(iteration, width, height)
        if iteration >= from_iteration:
            images[0, 0, 5, 5] = np.nan
        return images, truths

    trainer.loader.batch = poisoned
    return real_batch
