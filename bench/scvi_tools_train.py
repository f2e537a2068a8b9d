"""Train scvi-tools' MRVI on data exported by bench/vs_scvi_tools.R and print its speed.

    python bench/scvi_tools_train.py DATA_DIR BACKEND EPOCHS THREADS

DATA_DIR holds the counts as the slots of an R dgCMatrix (genes x cells: p.bin and
i.bin int32, x.bin float64), meta.json (n_genes, n_cells) and obs.csv (sample,
site). BACKEND: "jax" or "torch" (scvi-tools >= 1.4 has both). Default model
settings, early stopping off, batch size as given by MRVI_BATCH_SIZE (default: the
model's own). Prints one line "RESULT key=value ...": cells_per_s is the training
cells per second of an epoch (validation included), the median over the epochs
after the first (which compiles the JAX program).
"""
import json
import os
import sys
import time

data_dir, backend, epochs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# thread counts are fixed before the numerical libraries start
os.environ["OMP_NUM_THREADS"] = str(threads)
os.environ["MKL_NUM_THREADS"] = str(threads)
os.environ["XLA_FLAGS"] = (
    f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} intra_op_parallelism_threads={threads}"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import anndata as ad  # noqa: E402
import torch  # noqa: E402
import lightning.pytorch as pl  # noqa: E402

torch.set_num_threads(threads)
import scvi  # noqa: E402
from scvi.external import MRVI  # noqa: E402

meta = json.load(open(os.path.join(data_dir, "meta.json")))
p = np.fromfile(os.path.join(data_dir, "p.bin"), dtype=np.int32)
i = np.fromfile(os.path.join(data_dir, "i.bin"), dtype=np.int32)
x = np.fromfile(os.path.join(data_dir, "x.bin"), dtype=np.float64)
counts = sp.csc_matrix((x.astype(np.float32), i, p), shape=(meta["n_genes"], meta["n_cells"]))
obs = pd.read_csv(os.path.join(data_dir, "obs.csv"), dtype=str)
obs.index = [f"c{k}" for k in range(meta["n_cells"])]
adata = ad.AnnData(X=counts.T.tocsr(), obs=obs)

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
            implementation=f"scvi-tools-{scvi.__version__}-{backend}",
            backend=backend,
            epochs=epochs,
            threads=threads,
            cells_per_s=round(train_cells / float(np.median(epoch_s))) if len(epoch_s) else "NA",
            epoch_s=round(float(np.median(epoch_s)), 2) if len(epoch_s) else "NA",
            wall_s=round(wall, 1),
        ).items()
    )
)
