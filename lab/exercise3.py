import sys; sys.path[:0] = [".", "lab"]

import torch

from extensions import subspaces
from load_run import load

run = load("runs/sst2-stsb")
S = run.statistics()                      # {task: {layer: {"S": H^T H / n, ...}}}
layer = "layers.2.value"
S_others = S["sst2"][layer]["S"]          # for STS-B's adapter, the other task is SST-2
eigenvalues, vectors = torch.linalg.eigh(S_others)   # ascending
A = vectors[:, :8].T                      # OSRM's A for STS-B: the 8 smallest, as rows
share = lambda A, S: (torch.trace(A @ S @ A.T) / torch.trace(S)).item()
print(f"energy A reads: own (STS-B) {share(A, S['stsb'][layer]['S']):.4%}, "
      f"others (SST-2) {share(A, S_others):.4%}, a random 8 of 384: {8 / 384:.4%}")
u = subspaces.layernorm_directions(run.encoder, [layer])[layer]
print(f"||A u||^2 = {(A @ u).norm().item() ** 2:.3f}  (u: the LayerNorm direction)")
print("smallest eigenvalues:", [f"{x:.2e}" for x in eigenvalues[:10].tolist()])
print("largest eigenvalues: ", [f"{x:.2e}" for x in eigenvalues[-3:].tolist()])
