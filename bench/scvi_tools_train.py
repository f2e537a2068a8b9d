"""Train scvi-tools' MRVI on data exported by bench/vs_scvi_tools.R and print its speed.

    python bench/scvi_tools_train.py DATA_DIR BACKEND EPOCHS THREADS

DATA_DIR: the folder of export_for_python() (bench/helpers.R) with obs columns
`sample` and `site`. BACKEND: "jax" or "torch" (scvi-tools >= 1.4 has both). Default model
settings, early stopping off, batch size as given by MRVI_BATCH_SIZE (default: the
model's own). With early stopping off scvi-tools skips validation; MRVI_VALIDATE=1
asks it to validate after every epoch (check_val_every_n_epoch = 1), as mrvi always
does, and names the result "...-validating". Prints one line "RESULT key=value ...":
cells_per_s is the training cells per second of an epoch (validation included, when
there is one), the median over the epochs after the first (which compiles the JAX
program).
"""
import os
import sys
import time

data_dir, backend, epochs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from scvi_common import read_export, set_threads  # noqa: E402

set_threads(threads)
import numpy as np  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
import scvi  # noqa: E402
from scvi.external import MRVI  # noqa: E402

adata = read_export(data_dir)
meta = {"n_cells": adata.n_obs}

try:
    MRVI.setup_anndata(adata, sample_key="sample", batch_key="site", backend=backend)
except TypeError:  # a release with one backend only
    MRVI.setup_anndata(adata, sample_key="sample", batch_key="site")
try:
    model = MRVI(adata, backend=backend)
except TypeError:
    model = MRVI(adata)


class EpochClock(pl.Callback):
    """Wall-clock time at the end of every training epoch (validation included)."""

    def __init__(self):
        self.ends = []

    def on_train_epoch_end(self, trainer, module):
        self.ends.append(time.perf_counter())


clock = EpochClock()
train_kwargs = dict(max_epochs=epochs, early_stopping=False, train_size=0.9, accelerator="cpu", callbacks=[clock])
if os.environ.get("MRVI_BATCH_SIZE"):
    train_kwargs["batch_size"] = int(os.environ["MRVI_BATCH_SIZE"])
validating = os.environ.get("MRVI_VALIDATE") == "1"
if validating:
    train_kwargs["check_val_every_n_epoch"] = 1
t0 = time.perf_counter()
model.train(**train_kwargs)
wall = time.perf_counter() - t0
epoch_s = np.diff(clock.ends)
train_cells = round(0.9 * meta["n_cells"])
print(
    "RESULT "
    + " ".join(
        f"{k}={v}"
        for k, v in dict(
            implementation=f"scvi-tools-{scvi.__version__}-{backend}" + ("-validating" if validating else ""),
            backend=backend,
            epochs=epochs,
            threads=threads,
            cells_per_s=round(train_cells / float(np.median(epoch_s))) if len(epoch_s) else "NA",
            epoch_s=round(float(np.median(epoch_s)), 2) if len(epoch_s) else "NA",
            wall_s=round(wall, 1),
        ).items()
    )
)
