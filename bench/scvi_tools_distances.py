"""scvi-tools' MRVI on a data set exported by bench/helpers.R's
scvi_tools_group_distances() (bench/twins.R, bench/validity.R): train with the model's
defaults, then write the sample distance matrix of every cell group.

    python bench/scvi_tools_distances.py DATA_DIR THREADS SEED

DATA_DIR: the folder of export_for_python() (bench/helpers.R) with obs columns
`sample`, `group` and optionally `batch` (the nuisance covariate, scvi-tools'
batch_key). Defaults throughout (JAX backend, scvi-tools' epoch heuristic,
get_local_sample_distances(groupby = "group"): posterior means, unnormalised); writes
DATA_DIR/distances_<k>.csv (k = 1, 2, ...: a matrix with sample names as row and
column names) and DATA_DIR/groups.txt (the group of each file), and prints
"RESULT epochs=... seconds=...".
"""
import os
import sys
import time

data_dir, threads, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from scvi_common import read_export, set_threads  # noqa: E402

set_threads(threads)
import pandas as pd  # noqa: E402
import scvi  # noqa: E402
from scvi.external import MRVI  # noqa: E402

scvi.settings.seed = seed
adata = read_export(data_dir)
batch = {"batch_key": "batch"} if "batch" in adata.obs.columns else {}
try:
    MRVI.setup_anndata(adata, sample_key="sample", backend="jax", **batch)
except TypeError:  # a release with one backend only
    MRVI.setup_anndata(adata, sample_key="sample", **batch)
try:
    model = MRVI(adata, backend="jax")
except TypeError:
    model = MRVI(adata)
t0 = time.perf_counter()
# SCVI_MAX_EPOCHS: for smoke tests only (default: scvi-tools' own heuristic)
limit = {"max_epochs": int(os.environ["SCVI_MAX_EPOCHS"])} if os.environ.get("SCVI_MAX_EPOCHS") else {}
model.train(accelerator="cpu", **limit)
seconds = time.perf_counter() - t0
epochs = len(model.history["elbo_train"]) if "elbo_train" in model.history else "NA"

dists = model.get_local_sample_distances(groupby="group", keep_cell=False)
arr = dists["group"]
group_dim = [d for d in arr.dims if d not in ("sample_x", "sample_y")][0]
groups = [str(g) for g in arr.coords[group_dim].values]
for k, g in enumerate(groups, start=1):
    m = arr.sel({group_dim: arr.coords[group_dim].values[k - 1]})
    frame = pd.DataFrame(m.values, index=[str(s) for s in m.coords["sample_x"].values],
                         columns=[str(s) for s in m.coords["sample_y"].values])
    frame.to_csv(os.path.join(data_dir, f"distances_{k}.csv"))
with open(os.path.join(data_dir, "groups.txt"), "w") as f:
    f.write("\n".join(groups) + "\n")
print(f"RESULT epochs={epochs} seconds={seconds:.1f} scvi_tools={scvi.__version__}")
