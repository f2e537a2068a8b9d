"""What the scvi-tools benchmark scripts share: thread settings fixed before the
numerical libraries start, and the data that bench/helpers.R's
export_for_python() writes."""
import json
import os


def set_threads(threads):
    """Thread counts of OpenMP, MKL, XLA (JAX) and torch; call before importing them."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["XLA_FLAGS"] = (
        f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} intra_op_parallelism_threads={threads}"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"
    import torch

    torch.set_num_threads(threads)


def read_export(data_dir):
    """An AnnData (cells x genes, CSR float32) with obs from obs.csv (strings)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    meta = json.load(open(os.path.join(data_dir, "meta.json")))
    p = np.fromfile(os.path.join(data_dir, "p.bin"), dtype=np.int32)
    i = np.fromfile(os.path.join(data_dir, "i.bin"), dtype=np.int32)
    x = np.fromfile(os.path.join(data_dir, "x.bin"), dtype=np.float64)
    counts = sp.csc_matrix((x.astype(np.float32), i, p), shape=(meta["n_genes"], meta["n_cells"]))
    obs = pd.read_csv(os.path.join(data_dir, "obs.csv"), dtype=str)
    obs.index = [f"c{k}" for k in range(meta["n_cells"])]
    return ad.AnnData(X=counts.T.tocsr(), obs=obs)
