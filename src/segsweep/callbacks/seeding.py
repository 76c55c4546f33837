"""Re-seed the global RNGs at every training batch from (seed, epoch, batch, rank).

Dropout and other in-model randomness draw from torch's global generator, whose state a
checkpoint does not hold, and which Lightning and the DataLoader also draw from at moments that
differ between a fresh and a resumed epoch (the loader's base seed). Seeding it per batch makes
epoch k the same whether the run went through without a stop or was resumed just before k (see
``segsweep.data.sampling`` for the data order and augmentations).
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch

from segsweep.data.sampling import epoch_seed


class EpochSeed(L.Callback):
    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        seed = epoch_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank, 1)
        # torch.manual_seed costs ~0.5 ms a call (it records a stack trace per uninitialised
        # backend); the CPU generator alone, and CUDA's only once it is in use, cost microseconds.
        torch.default_generator.manual_seed(seed)
        if torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(seed)
        np.random.seed(seed)
        random.seed(seed)
