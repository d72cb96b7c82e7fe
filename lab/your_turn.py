"""Your turn: four small pieces of the method, left for you to write (LAB.md, exercise 7).

Each function says what to compute. `python -m pytest tests/test_lab.py` checks your version
against the project's own (osrm_min.py, merge.py) and skips, with a message, every function
that still raises NotImplementedError. Work in torch; every input is a torch tensor.
"""

import torch  # noqa: F401  (you will need it)


def osrm_subspace_from(S_others, rank):
    """OSRM's A_t for one layer (paper, section 3): the `rank` x d matrix with orthonormal rows
    that minimises tr(A S A^T), where S = S_others is the sum of the other tasks' second
    moments (d x d, symmetric, float64 as the statistics are kept; return A in S's dtype).
    Hint: torch.linalg.eigh returns eigenvalues in ascending order and eigenvectors as
    columns."""
    raise NotImplementedError


def interference_ratio(dW_t, dW_j, S_j):
    """How strongly adapter t responds to task j's inputs, relative to task j's own adapter:
    ||dW_t H_j^T|| / ||dW_j H_j^T|| (Frobenius), where S_j = H_j^T H_j / n is task j's second
    moment. You do not have H_j: use ||M H^T||^2 = n tr(M S M^T). The updates dW_t, dW_j are
    d_out x d_in float32 (as adapters are trained), S_j is d_in x d_in float64 (as statistics
    are kept); a matmul of the two dtypes fails, so cast the updates to float64 first. Return a
    float or a 0-d tensor."""
    raise NotImplementedError


def trim(delta, keep):
    """TIES step 1: keep the int(keep * delta.numel()) entries of `delta` (float32, any shape)
    that are largest in magnitude (their values, not their magnitudes), zero the others; same
    shape and dtype as `delta`."""
    raise NotImplementedError


def elect_and_merge(trimmed, lam):
    """TIES steps 2 and 3 on trimmed task vectors stacked as `trimmed` (T, ...; float32, as
    `trim` returns them) and a float `lam`: elect each entry's sign as the sign of its sum over
    tasks; average only the values that agree with it (and are not zero), dividing by how many
    agree (an entry nobody keeps stays 0); scale by `lam`. Returns trimmed.shape[1:], float32."""
    raise NotImplementedError
