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

print("A before and after training (results.json's movement; held-out rows):")
moved = run.movement()
width = max(len(init) for init in moved) + 2
print(f"{'init':{width}}{'task':6}{'own: start -> end':>20}{'others: start -> end':>24}{'overlap':>9}")
for init, by_task in moved.items():
    for task, m in by_task.items():
        print(f"{init:{width}}{task:6}{m['own_start']:>10.2%} -> {m['own_end']:<6.2%}"
              f"{m['others_start']:>14.2%} -> {m['others_end']:<6.2%}{m['overlap']:>9.3f}")
