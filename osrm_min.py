"""OSRM, end to end: fine-tune one LoRA adapter per GLUE task with the standard and with the
OSRM initialisation, merge each family, and measure how much the merged model loses.

    python osrm_min.py --tasks sst2,mrpc             # a quick CPU run (minutes)
    python osrm_min.py --tasks sst2,mrpc --full      # the paper's protocol, for a GPU

The method of Zhang & Zhou, "Unraveling LoRA Interference: Orthogonal Subspaces for Robust
Model Merging" (ACL 2025), in the order of this file:

1. `collect_statistics`: with the frozen pretrained model, every LoRA-adapted layer's inputs on
   k training examples per task give a second-moment matrix S_j = H_j^T H_j / n_j (the paper)
   and a mean vector mu_j (the authors' released code).
2. `osrm_subspace`: for task t, A_t = the r eigenvectors of S_{-t} = sum_{j != t} S_j with the
   smallest eigenvalues, the minimiser of tr(A S_{-t} A^T) over A A^T = I (Ky Fan); B_t = 0.
3. `INITS` and `build_adapter`: how each initialisation (plain LoRA, OSRM and its ablations)
   makes a task's adapter.
4. Fine-tuning and evaluation (train.py): AdamW with a linear schedule; the GLUE metrics.
5. `merged_scores`: merging on the dense dW_t = s B_t A_t (merge.py), each task scored with its
   own head; RegMean and Fisher merging first read `merge_statistics` from each model.
6. `interference`: how much each adapter writes on the other tasks' inputs,
   ||dW_t H_j|| / ||dW_j H_j||, from the same statistics; `subspace_energy`.
7. `run_seed`: the experiment, top to bottom, and `run`, seed by seed. What wraps it lives in
   study/: the settings (config.py), the command line (cli.py), saved adapters and scores
   (resume.py), what a run records and says (record.py), the report (report.py).
"""

import contextlib
import signal
import sys

if __name__ == "__main__":  # Ctrl-C while torch loads: a quiet exit, not a traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import time
import zlib
from dataclasses import dataclass, replace

import torch

import data
import fisher
import lora
import merge
import train
from extensions.subspaces import (layernorm_directions, own_task_subspace, random_null_basis,
                                  without_direction)
from speed import fastpath, parallel
from study import cli, config, record, resume
from study.config import ExperimentError


# 1. Statistics of each layer's inputs

def collect_statistics(encoder, batches, layer_names):
    """Per layer, S = H^T H / n and mu = the mean of H's rows, padding excluded.

    H (n x d_in) stacks the inputs that this very layer sees on the given batches, one row per
    real token, computed by the frozen pretrained model (the paper's section 3). Forward hooks
    read the inputs; nothing is kept but running sums, in float64. The statistics are small
    (d_in x d_in per layer), so they are returned on the CPU whatever device the model runs on,
    and what is computed from them (subspaces, interference, energy, movement) stays there.
    """
    layers = dict(encoder.named_modules())
    sums = {name: {"HtH": 0.0, "h": 0.0, "n": 0} for name in layer_names}
    mask = None  # (B, T) of the batch in progress, True at real tokens

    def hook(name):
        def read_input(module, inputs, output):
            h = inputs[0][mask].double()  # (B, T, d_in) -> (n_real_tokens, d_in)
            s = sums[name]
            s["HtH"] = s["HtH"] + h.T @ h
            s["h"] = s["h"] + h.sum(0)
            s["n"] += h.shape[0]
        return read_input

    handles = [layers[name].register_forward_hook(hook(name)) for name in layer_names]
    encoder.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                mask = batch["attention_mask"]
                encoder(batch["input_ids"], batch["token_type_ids"], mask)
    finally:
        for h in handles:
            h.remove()
    return {name: {"S": (s["HtH"] / s["n"]).cpu(), "mu": (s["h"] / s["n"]).cpu(), "n": s["n"]}
            for name, s in sums.items()}


# 2. The OSRM subspace

def osrm_subspace(stats_of_others, rank, statistic="second_moment"):
    """A_t (rank x d_in) with orthonormal rows for one layer, from the other tasks' statistics.

    "second_moment" (the paper): the eigenvectors of S_{-t} = sum_j S_j with the `rank`
    smallest eigenvalues, which minimise tr(A S_{-t} A^T) subject to A A^T = I (Ky Fan's
    theorem). S_j is the uncentred second moment H_j^T H_j / n_j, not a covariance: the mean
    input passes through dW_t too.
    "mean" (the authors' code): the last `rank` right singular vectors of X = [mu_j]_j, part of
    a basis of X's null space, so that A mu_j = 0 for every other task j. Which part is
    LAPACK's choice, not the data's: its Householder basis puts these rows almost entirely on
    the last `rank` hidden coordinates (entries ~0.99 there), the same for every task, so
    every osrm-mean adapter starts reading nearly the same coordinates (--inits
    osrm-mean-random takes a random basis of the same null space instead).
    """
    if statistic == "second_moment":
        S = sum(s["S"] for s in stats_of_others)
        _, eigenvectors = torch.linalg.eigh(S)  # columns, by ascending eigenvalue
        A = eigenvectors[:, :rank].T
    elif statistic == "mean":
        X = torch.stack([s["mu"] for s in stats_of_others])  # (T-1, d_in)
        _, _, Vh = torch.linalg.svd(X, full_matrices=True)  # rows of Vh: right singular vectors
        A = Vh[-rank:]
    else:
        raise ValueError(f"unknown OSRM statistic {statistic!r}")
    return A.float()


def osrm_init(stats, task, rank, statistic, ln_directions=None, own_eps=0.1, seed=0):
    """{layer name: A_t} for `task` from `stats` = {task: {layer name: statistics}}.

    The paper's statistics go through `osrm_subspace`; "own" and "mean-random" are this
    project's extensions (extensions/subspaces.py). `ln_directions` {layer name: u}, if given: choose the
    second-moment subspace away from the LayerNorm direction u (--osrm-skip-ln-direction).
    """
    others = [t for t in stats if t != task]
    A = {}
    for name in stats[task]:
        of_others = [stats[t][name] for t in others]
        u = (ln_directions or {}).get(name)
        if u is not None and statistic in ("second_moment", "own"):
            of_others = [dict(s, S=without_direction(s["S"], u)) for s in of_others]
        if statistic == "own":
            S_others = sum(s["S"] for s in of_others) / len(of_others)
            try:
                A[name] = own_task_subspace(stats[task][name]["S"], S_others, rank, own_eps)
            except torch.linalg.LinAlgError:  # eps * tr(S)/d overflows, so Cholesky cannot run
                raise ExperimentError(f"osrm-own ({task}, {name}): S_others + eps I cannot be "
                                      f"factorised with --own-eps {own_eps:g}; use a smaller "
                                      f"--own-eps (the default is 0.1)") from None
        elif statistic == "mean-random":
            A[name] = random_null_basis([s["mu"] for s in of_others], rank,
                                                   seed + zlib.crc32(name.encode()))
        else:
            A[name] = osrm_subspace(of_others, rank, statistic)
    return A


# 3. The initialisations: how each one builds a task's adapter

@dataclass(frozen=True)
class Init:
    """What one --inits name means; `build_adapter` follows it."""
    statistic: str = None   # the OSRM statistic A_t comes from; None: a random A_t
    A_dist: str = "kaiming"  # how a random A_t is drawn (lora.add_lora)
    train_A: bool = True    # False: A_t stays where it starts, only B_t (and the head) learn
    post_hoc: bool = False  # True: no training; plain LoRA's trained adapter is projected
    help: str = ""


INITS = {
    "lora": Init(help="plain LoRA: A random (Kaiming-uniform, as PEFT), B = 0"),
    "osrm": Init("second_moment", help="the paper: A_t from the other tasks' second moments, "
                                       "B = 0, both trained"),
    "osrm-mean": Init("mean", help="the authors' code's statistic: A_t in the null space of "
                                   "the other tasks' mean inputs"),
    "osrm-frozen": Init("second_moment", train_A=False, help="OSRM with A_t kept fixed "
                                                             "(the paper's ablation)"),
    "osrm-post": Init("second_moment", post_hoc=True,
                      help="plain LoRA's trained adapters projected onto OSRM's row space, "
                           "dW A^T A, no training (the authors' post_OSRM); list lora first"),
    # This project's own, not the paper's (extensions/subspaces.py, lora.random_A)
    "osrm-own": Init("own", help="osrm-min's extension: A_t from the top generalised "
                                 "eigenvectors of (S_t, S_others + eps I), much of the task's "
                                 "own input energy and little of the others' (--own-eps)"),
    "osrm-mean-random": Init("mean-random", help="osrm-min's extension: osrm-mean with a seeded "
                                                 "random basis of the same null space"),
    "lora-gaussian": Init(A_dist="gaussian", help="plain LoRA with A ~ N(0, 1/r^2), PEFT's "
                                                  "gaussian init, the authors' baseline"),
    "lora-orthonormal": Init(A_dist="orthonormal", help="osrm-min's control: a random A with "
                                                        "orthonormal rows, OSRM's shape and scale "
                                                        "without its directions, B = 0"),
}


@dataclass
class Adapter:
    """One task's adapter: LoRA's A and B of every adapted layer, and the task's own head."""
    lora: dict               # {"layers.0.query.A": A, "layers.0.query.B": B, ...}
    head: torch.nn.Module    # the task's classifier, trained with the adapter, never merged
    training: dict = None    # how the training loss moved (finetune); None if not trained

    def task_vector(self, scale):
        """{layer name: dW = s B A}, the dense update that merging works on (never A and B
        apart, which would create cross terms B_i A_j)."""
        layers = [k.removesuffix(".A") for k in self.lora if k.endswith(".A")]
        return {n: scale * self.lora[f"{n}.B"] @ self.lora[f"{n}.A"] for n in layers}

    def A(self):
        """{layer name: A} of the adapter as it is now."""
        return {k.removesuffix(".A"): v for k, v in self.lora.items() if k.endswith(".A")}


def task_seed(seed, task):
    """A per-task seed, so that each task's random A and head differ (stable across runs)."""
    return seed + zlib.crc32(task.encode()) % 10_000


def initial_A(encoder, init, task, cfg, subspaces):
    """{layer name: A_t} that task `task`'s adapter starts from under `init`: OSRM's subspace
    for the OSRM inits (subspaces: {statistic: {task: {layer: A}}}), a seeded random draw
    (lora.random_As) for the plain ones."""
    spec = INITS[init]
    if spec.statistic is not None:
        return subspaces[spec.statistic][task]
    return lora.random_As(encoder, cfg.targets, cfg.rank, task_seed(cfg.seed, task), spec.A_dist)


def new_head(encoder, task, cfg, train_rows=()):
    """A fresh head for `task`, seeded per task. osrm-min's own (--head-bias-mean, on by
    default): a regression head's bias starts at the mean training target (rows as
    data.encode_examples gives them) instead of 0, so that STS-B's first steps do not chase a
    large uniform error (scores 0-5) and collapse onto a near-constant prediction
    (results/README.md measures it). Classification heads are unchanged."""
    torch.manual_seed(task_seed(cfg.seed, task.name))
    pooler = encoder.pooler if getattr(encoder, "has_pretrained_pooler", False) else None
    head = lora.ClassificationHead(encoder.config.hidden_size, task.num_labels, cfg.pooling,
                                   encoder.config.hidden_dropout_prob, pooler)
    if not task.labels and cfg.head_bias_mean and train_rows:
        with torch.no_grad():
            head.classifier.bias.fill_(sum(label for *_, label in train_rows) / len(train_rows))
    return head.to(cfg.device)


def build_adapter(model, head, A_init, train_A, task_data, cfg, desc, progress=True):
    """Fine-tune a fresh adapter on one task (section 3 of the paper, then its fine-tuning):
    every adapted layer starts from A = A_init[layer] and B = 0, A trainable or not
    (`train_A`), with the task's `head`; task_data: data.prepare_tasks's entry of the task.
    Returns (lora state, training summary); the model is left without LoRA, the head trained."""
    lora.add_lora(model, cfg.targets, cfg.rank, cfg.alpha, cfg.lora_dropout, A_init)
    for m in lora.lora_layers(model).values():
        m.A.requires_grad_(train_A)
    seed = task_seed(cfg.seed, task_data["task"].name)
    batches = lambda epoch: data.make_batches(task_data["train"], cfg.batch_size, shuffle=True,
                                              seed=seed + epoch, group_by_length=cfg.group_by_length,
                                              pad_id=task_data["pad_id"])
    torch.manual_seed(seed)  # dropout masks
    training = train.finetune(model, head, batches, cfg.epochs, cfg.lr, cfg.weight_decay,
                              cfg.warmup, cfg.max_grad_norm, cfg.device, desc, progress)
    state = lora.lora_state(model)
    lora.remove_lora(model)
    return state, training


def osrm_post(A, B, A_osrm):
    """The post-hoc variant (the authors' post_OSRM): a trained adapter dW = s B A becomes
    dW A_o^T A_o, no training. That is again a rank-r adapter, (A', B') = (A_o, B A A_o^T)."""
    return A_osrm.clone(), B @ (A @ A_osrm.T)


def post_hoc_adapter(plain, A_osrm):
    """osrm-post: plain LoRA's trained adapter, every layer projected by `osrm_post`."""
    state = {}
    for layer, A_o in A_osrm.items():
        state[f"{layer}.A"], state[f"{layer}.B"] = osrm_post(plain.lora[f"{layer}.A"],
                                                             plain.lora[f"{layer}.B"], A_o)
    return Adapter(state, plain.head)


# 5. Merging

def lambdas(cfg, method):
    """The lambdas a merge is evaluated at: --lams, else the method's default; avg has 1/T, and
    the merges without a lambda (RegMean, Fisher, EMR) have None."""
    if method in merge.NO_LAMBDA:
        return [None]
    if method == "avg":
        return [1 / len(cfg.tasks)]
    return list(cfg.lams) or [cfg.lam_ties if method.endswith("ties") else cfg.lam_ta]


def regmean_grams(stats, weighting="mean"):
    """RegMean's G_t of one task, {layer: G}, from its `collect_statistics`: "mean", X^T X / n
    over the n real tokens (S itself), as MergeLM's and RegMean's hooks average over the rows
    they see, so that every task weighs the same; "sum", X^T X, weighs tasks by their tokens.
    The references' rows include the padding of their batches; these exclude it, as its
    outputs are never read (and how much there is depends on how the batches were cut)."""
    if weighting not in ("mean", "sum"):
        raise ValueError(f"unknown RegMean Gram weighting {weighting!r}")
    return {n: s["S"] if weighting == "mean" else s["S"] * s["n"] for n, s in stats.items()}


def merge_statistics(encoder, adapters, prepared, cfg):
    """What the data-aware merges read from each task's fine-tuned model (its adapter in place)
    on its first training rows: {"regmean": [{layer: G_t}] (`regmean_grams`), "fisher":
    [{layer: F_t}]}, for those of the two that --merges asks for."""
    out = {}
    for t, adapter in adapters.items():
        rows, pad_id = prepared[t]["train"], prepared[t]["pad_id"]
        with lora.carrying(encoder, adapter.lora, cfg.targets, cfg.rank, cfg.alpha):
            layers = lora.lora_layers(encoder)
            if "regmean" in cfg.merges:
                batches = data.make_batches(rows[:cfg.regmean_samples], cfg.batch_size,
                                            group_by_length=True, pad_id=pad_id)
                stats = collect_statistics(encoder, [train.to_device(b, cfg.device) for b in batches],
                                           list(layers))
                out.setdefault("regmean", []).append(regmean_grams(stats, cfg.regmean_grams))
            if "fisher" in cfg.merges:
                examples = data.make_batches(rows[:cfg.fisher_samples], 1, pad_id=pad_id)
                out.setdefault("fisher", []).append(
                    fisher.fisher_diagonal(encoder, adapter.head, examples, layers, cfg.device))
    return out


OWN_AT_LAMBDA = ("ta", "ties")  # --own-at-lambda: the merges whose own-update part is scored


def merged_scores(encoder, method, lam, task_vectors, heads, statistics, score, cfg):
    """{task: score} with the tasks' updates merged by `method` at `lam` into the pretrained
    weights, each task scored with its own head by `score(heads)`. EMR gives each task its own
    update (merge.emr_updates), so each task is scored on its own model."""
    if method == "emr":
        scores = {}
        for (t, head), update in zip(heads.items(), merge.emr_updates(list(task_vectors.values()))):
            with lora.merged_into_weights(encoder, update):
                scores.update(score({t: head}))
        return scores
    try:
        merged = merge.merge_task_vectors(list(task_vectors.values()), method, lam, cfg.ties_keep,
                                          cfg.ties_scope, cfg.dare_p, cfg.seed,
                                          statistics.get(method), cfg.regmean_alpha,
                                          cfg.fisher_normalize, cfg.fisher_eps)
    except ValueError as e:  # RegMean's sum of Gram matrices is singular
        raise ExperimentError(f"{method}: {e}; use more --regmean-samples or a --regmean-alpha "
                              f"below 1") from None
    with lora.merged_into_weights(encoder, merged):
        return score(heads)


# 6. Interference, and the energy OSRM's subspace reads

def quadratic_trace(M, S):
    """tr(M S M^T) in float64: with S = H^T H / n, the mean squared norm of M h over H's rows.
    Computed where S lives (the CPU, `collect_statistics`)."""
    M = M.to(S.device, torch.float64)
    return torch.einsum("ij,jk,ik->", M, S, M)


def interference(task_vectors, stats):
    """[[I_tj]]: adapter t's output on task j's inputs relative to task j's own, per layer
    ||dW_t H_j^T|| / ||dW_j H_j^T|| (Frobenius), averaged over layers.

    This is the size of the interference term of the paper's equation (section 3) against the
    signal. Since ||dW H^T||^2 = n tr(dW S dW^T), the second-moment matrices S_j already
    collected give it exactly, without keeping any activations. task_vectors: {task: {layer
    name: dW}}; stats: {task: {layer name: {"S": ...}}}.
    """
    tasks = list(task_vectors)
    matrix = []
    for t in tasks:
        row = []
        for j in tasks:
            ratios = [(quadratic_trace(task_vectors[t][n], stats[j][n]["S"])
                       / quadratic_trace(task_vectors[j][n], stats[j][n]["S"])).sqrt().item()
                      for n in task_vectors[t]]
            row.append(sum(ratios) / len(ratios))
        matrix.append(row)
    return matrix


def subspace_energy(A_init, stats, task):
    """(own, others): the share of the input energy that the OSRM subspace A_t reads, of task
    t's own inputs and of the other tasks', tr(A S A^T) / tr(S) averaged over layers.

    OSRM makes `others` small by construction. If the tasks' inputs to a shared encoder look
    alike, `own` is small too: the adapter then starts blind to its own task as well. For
    scale, a random r-dimensional subspace reads r / d_in of any isotropic input.
    """
    share = lambda A, S: (quadratic_trace(A, S) / S.trace()).item()
    own, others = [], []
    for name, A in A_init.items():
        own.append(share(A, stats[task][name]["S"]))
        others.append(share(A, sum(stats[j][name]["S"] for j in stats if j != task)))
    return sum(own) / len(own), sum(others) / len(others)


def row_space(A):
    """An orthonormal basis (r x d_in) of A's row space: what an adapter reads, at any scale."""
    Q, _ = torch.linalg.qr(A.double().T)
    return Q.T


def movement(A_start, A_end, stats, task):
    """How far training moved task t's A, averaged over layers: the share of its own task's and
    of the other tasks' input energy that A's row space reads at the start and at the end
    (`subspace_energy`, on `stats`), and the overlap of the two row spaces, the mean cos^2 of
    their principal angles, ||Q_start Q_end^T||_F^2 / r (1: A did not turn; about r / d_in
    between unrelated random subspaces)."""
    Q_start = {n: row_space(A) for n, A in A_start.items()}
    Q_end = {n: row_space(A) for n, A in A_end.items()}
    own_start, others_start = subspace_energy(Q_start, stats, task)
    own_end, others_end = subspace_energy(Q_end, stats, task)
    overlap = [(Q_start[n] @ Q_end[n].to(Q_start[n]).T).pow(2).sum().item() / Q_start[n].shape[0]
               for n in Q_start]
    return {"own_start": own_start, "others_start": others_start, "own_end": own_end,
            "others_end": others_end, "overlap": sum(overlap) / len(overlap)}


# 7. The experiment

def run_seed(cfg, encoder, model, tokenizer, store, results, workers=None):
    """Everything for one seed, in the order of the method: statistics, subspaces, then for
    every init its adapters (scored alone), every merge at every lambda, the interference
    (run_init). `model` is the encoder with the speed tricks on (speed/fastpath.py), for
    training and scoring; `store` (study/resume.py) reuses what an earlier run saved; results
    (study/record.py) collects what results.json holds; with `workers` (speed/parallel.Workers)
    the inits run side by side in worker processes, and their results arrive later."""
    prepared = prepare(cfg, tokenizer, store.inputs)
    record.data(results, prepared)
    record.labels(results, prepared, cfg.seed)
    # 1. each task's layer statistics, from the frozen pretrained encoder; and the same on
    # held-out rows, to measure on
    stats = layer_statistics(encoder, cfg, prepared, "stats")
    measured = layer_statistics(encoder, cfg, prepared, "measure")
    # 2. OSRM's subspace of every task, once per statistic that the inits use
    u = layernorm_directions(encoder, stats[cfg.tasks[0]])  # the LayerNorm directions
    skip = u if cfg.osrm_skip_ln_direction else None
    subspaces = {s: {t: osrm_init(stats, t, cfg.rank, s, skip, cfg.own_eps, cfg.seed) for t in cfg.tasks}
                 for s in dict.fromkeys(INITS[i].statistic for i in cfg.inits if INITS[i].statistic)}
    record.subspaces(results, cfg.seed, cfg.rank, stats, measured, subspaces, u, subspace_energy)
    # 3-6. every init in turn; or side by side
    seed_data = (prepared, stats, measured, subspaces)
    if workers is not None:
        shared = workers.share(seed_data)  # written once for the seed's jobs
        for inits in init_groups(cfg):
            workers.submit((cfg.seed, tuple(inits)), inits_job, (cfg, inits, shared, store.inputs))
        return
    trained = {}
    for init in cfg.inits:
        trained[init] = run_init(cfg, init, encoder, model, store, results, seed_data, trained)


def run_init(cfg, init, encoder, model, store, results, seed_data, trained, progress=True):
    """Steps 3-6 of one seed under one init: each task's adapter, built as the init says and
    fine-tuned, scored alone; every merge at every lambda; the interference. seed_data: the
    seed's (prepared data, statistics, held-out statistics, subspaces); trained: {init: the
    adapters} of the inits before (the post-hoc ones project plain LoRA's). Returns the
    adapters, {task: Adapter}."""
    prepared, stats, measured, subspaces = seed_data
    spec = INITS[init]
    # 3-4. each task's adapter, built as the init says and fine-tuned; scored alone
    adapters = {}
    for t in cfg.tasks:
        if spec.post_hoc:
            adapters[t] = post_hoc_adapter(trained["lora"][t], subspaces[spec.statistic][t])
        else:
            head = fastpath.use_fast_dropout(new_head(encoder, prepared[t]["task"], cfg,
                                                      prepared[t]["train"]))
            A_init = initial_A(encoder, init, t, cfg, subspaces)
            state, training = store.adapter(
                cfg, t, init, spec.statistic is not None,
                lora.lora_shapes(encoder, cfg.targets, cfg.rank), head,
                lambda: build_adapter(model, head, A_init, spec.train_A, prepared[t], cfg,
                                      f"{init}/{t}", progress))
            adapters[t] = Adapter(state, head, training)
            record.training(results, cfg.seed, init, t, training)
            record.movement(results, cfg.seed, init, t, movement(A_init, adapters[t].A(), measured, t))
        with lora.carrying(model, adapters[t].lora, cfg.targets, cfg.rank, cfg.alpha):
            rows = store.evaluate(model, {t: adapters[t]}, prepared, cfg, init, "none", None)
        record.scores(results, rows)
        record.alone(results, init, t, rows[0])
    task_vectors = {t: a.task_vector(cfg.alpha / cfg.rank) for t, a in adapters.items()}
    heads = {t: a.head for t, a in adapters.items()}
    # 5. every merge at every lambda, each task scored with its own head
    t0 = time.time()
    statistics = merge_statistics(encoder, adapters, prepared, cfg)
    record.merge_statistics(results, cfg.seed, init, list(statistics), time.time() - t0)
    for method in cfg.merges:
        for lam in lambdas(cfg, method):
            t0 = time.time()
            score = lambda h: record.dev_scores(results, store.evaluate(
                model, {t: adapters[t] for t in h}, prepared, cfg, init, method, lam,
                merged_from=adapters, select=lam is not None))
            record.merged(init, method, lam, merged_scores(
                model, method, lam, task_vectors, heads, statistics, score, cfg), t0)
            if cfg.own_at_lambda and method in OWN_AT_LAMBDA:  # each task's own update alone
                for t in cfg.tasks:
                    own = lambda h, t=t: record.dev_scores(results, store.evaluate(
                        model, {t: adapters[t]}, prepared, cfg, init, f"{method}:own", lam,
                        merged_from={t: adapters[t]}))
                    merged_scores(model, method, lam, {t: task_vectors[t]}, {t: heads[t]}, {}, own, cfg)
    # 6. how much each adapter writes on the other tasks' inputs: on held-out rows, and on
    # the rows OSRM's subspace was fitted to (which flatters OSRM)
    for key, on in (("interference", measured), ("interference_fit", stats)):
        record.interference(results, key, cfg.seed, init, cfg.tasks, interference(task_vectors, on))
    return adapters


def init_groups(cfg):
    """The inits of a seed that can run apart (--workers): each alone, but a post-hoc init
    (osrm-post) with plain LoRA, whose trained adapters it projects."""
    return [[init] + ([p for p in cfg.inits if INITS[p].post_hoc] if init == "lora" else [])
            for init in cfg.inits if not INITS[init].post_hoc]


def inits_job(encoder, model, job):
    """run_init for a group of one seed's inits in a worker process (speed/parallel.py): job =
    (cfg, inits, the name the seed's data was shared under, input fingerprints). Adapters are
    saved as they finish, as in one process; the scores are not (this process writes them):
    returns ({init: what it adds to the results}, the new score rows)."""
    cfg, inits, shared, inputs = job
    seed_data = parallel.shared(shared)
    store = resume.Store(cfg, inputs, save_scores=False)
    trained, added = {}, {}
    for init in inits:
        added[init] = record.new_results(cfg, inputs)
        record.data(added[init], seed_data[0])
        trained[init] = run_init(cfg, init, encoder, model, store, added[init], seed_data,
                                 trained, progress=False)
    return added, store.scores.new_rows


def prepare(cfg, tokenizer, inputs):
    """Each task's rows for this seed (data.prepare_tasks), read from the GLUE files whose
    content `inputs` fingerprinted (resume.fingerprint_inputs; a file changed since is an
    error)."""
    return data.prepare_tasks(cfg.tasks, cfg.data_dir, tokenizer, config.train_rows(cfg), cfg.seed,
                              cfg.max_length, cfg.osrm_samples, cfg.eval_batch_size,
                              cfg.heldout_samples if cfg.select_on == "heldout" else 0,
                              cfg.dev_samples, cfg.carve_splits, cfg.measure_samples, inputs)


def statistics_batches(task_data, rows, cfg):
    """The batches `layer_statistics` reads of one task (an entry of `prepare`'s)."""
    return data.make_batches(task_data[rows], cfg.batch_size, group_by_length=True,
                             pad_id=task_data["pad_id"])


def layer_statistics(encoder, cfg, prepared, rows):
    """{task: {layer name: statistics}} on each task's k examples (rows "stats"), or on its
    held-out measurement rows ("measure"); order does not matter, so batches are cut from
    length-sorted examples, with little padding."""
    lora.remove_lora(encoder)
    names = list(lora.target_layers(encoder, cfg.targets))
    t0 = time.time()
    stats = {}
    for n, p in prepared.items():
        batches = [train.to_device(b, cfg.device) for b in statistics_batches(p, rows, cfg)]
        stats[n] = collect_statistics(encoder, batches, names)
    what = (f"{cfg.osrm_samples} training examples" if rows == "stats"
            else f"{cfg.measure_samples} held-out dev rows (to measure on)")
    print(f"layer statistics: {what} per task, {len(names)} layers, {time.time() - t0:.1f}s")
    return stats


def run(cfg, encoder, tokenizer, inputs):
    """The whole experiment, seed by seed; returns the results dict written to results.json.
    inputs: the fingerprints of the input files (resume.fingerprint_inputs)."""
    n = min(parallel.workers(cfg), len(cfg.seeds) * len(init_groups(cfg)))
    loaded = resume.encoder_digest(encoder) if n > 1 else None  # what each worker must load too
    encoder.to(cfg.device)
    model = fastpath.speed_up(encoder)  # the same modules; the speed tricks switched on
    store = resume.Store(cfg, inputs)
    results = record.new_results(cfg, inputs)
    pool = parallel.Workers(cfg, n, loaded, encoder.config) if n > 1 else contextlib.nullcontext()
    with pool as workers:
        for seed in cfg.seeds:
            print(f"seed {seed}")
            run_seed(replace(cfg, seed=seed), encoder, model, tokenizer, store, results, workers)
        if workers is not None:  # each score saved as its job ends; results in one process's order
            done = workers.wait(lambda added_rows: store.scores.add(added_rows[1]))
            for seed in cfg.seeds:
                added = {i: a for g in init_groups(cfg) for i, a in done[seed, tuple(g)][0].items()}
                for init in cfg.inits:
                    record.extend(results, added[init])
    return results


def main(argv=None):
    """python osrm_min.py --tasks sst2,mrpc: the command line (study/cli.py) around `run`."""
    return cli.main(argv, {name: init.help for name, init in INITS.items()}, run)


if __name__ == "__main__":
    sys.exit(main())
