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
3. `INITS` and `finetune_adapter`: how each initialisation (plain LoRA, OSRM and its ablations)
   starts a task's adapter, then fine-tuning (train.py: AdamW with a linear schedule).
4. `score`: each task with its own head, by its GLUE metric (data.py).
5. `merged_scores`: merging on the dense dW_t = s B_t A_t (merge.py), each task scored with its
   own head; RegMean and Fisher merging first read `merge_statistics` from each model.
6. `interference`: how much each adapter writes on the other tasks' inputs,
   ||dW_t H_j|| / ||dW_j H_j||, from the same statistics.
7. `run_seed` (steps 1-2) and `run_init` (steps 3-6): the experiment, top to bottom; `run`, seed
   by seed, with what wraps them from outside: the command line (study/), saved work reused
   (study/resume.py, around `finetune_adapter` and `score`), results.json (study/record.py),
   the speed path and worker processes (speed/), our measurements (extensions/measures.py).
"""

import contextlib
import signal
import sys

if __name__ == "__main__":  # Ctrl-C while torch loads: a quiet exit, not a traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import time
import zlib
from dataclasses import dataclass, field

import torch

import data
import fisher
import lora
import merge
import train
from extensions import measures
from extensions.subspaces import INITS as OUR_INITS, layernorm_directions, variant_init
from speed import fastpath, parallel
from study import cli, record, resume


# 1. Statistics of each layer's inputs

def collect_statistics(encoder, batches, layer_names):
    """Per layer, S = H^T H / n and mu = the mean of H's rows, padding excluded.

    H (n x d_in) stacks the inputs that this very layer sees on the given batches, one row per
    real token, computed by the encoder as it is: the frozen pretrained model for OSRM (the
    paper's section 3), a fine-tuned one for RegMean (`merge_statistics`). Forward hooks
    read the inputs into running sums, in float64, on the encoder's device; the statistics are
    returned on the CPU, and what is computed from them stays there.
    """
    layers = dict(encoder.named_modules())
    sums = {name: {"HtH": 0.0, "h": 0.0, "n": 0} for name in layer_names}
    mask = None  # (B, T) of the batch in progress, True at real tokens

    def hook(name):
        def read_input(module, inputs, output):
            h = inputs[0][mask].double()  # (B, T, d_in) -> (n_real_tokens, d_in)
            s = sums[name]
            s["HtH"] = s["HtH"] + h.T @ h  # (d_in, d_in)
            s["h"] = s["h"] + h.sum(0)
            s["n"] += h.shape[0]
        return read_input

    handles = [layers[name].register_forward_hook(hook(name)) for name in layer_names]
    encoder.eval()
    try:
        with torch.inference_mode():
            for batch in (train.to_device(b, fastpath.device_of(encoder)) for b in batches):
                mask = batch["attention_mask"]
                # the plain forward pass over the padded batch, as lora.py writes it (never a
                # speed path's packing, which would reorder the rows the sums run over)
                lora.BertEncoder.forward(encoder, batch["input_ids"], batch["token_type_ids"], mask)
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
    LAPACK's choice, not the data's: its Householder basis puts these rows nearly all on the
    last `rank` hidden coordinates, for every task alike (--inits osrm-mean-random takes a
    random basis of the same null space instead).
    """
    if statistic == "second_moment":
        S = sum(s["S"] for s in stats_of_others)
        _, eigenvectors = torch.linalg.eigh(S)  # columns, by ascending eigenvalue
        A = eigenvectors[:, :rank].T  # (rank, d_in): the rank smallest, as rows
    elif statistic == "mean":
        X = torch.stack([s["mu"] for s in stats_of_others])  # (T-1, d_in)
        _, _, Vh = torch.linalg.svd(X, full_matrices=True)  # rows of Vh: right singular vectors
        A = Vh[-rank:]
    else:
        raise ValueError(f"unknown OSRM statistic {statistic!r}")
    return A.float()


def osrm_init(stats, task, rank, statistic="second_moment"):
    """{layer name: A_t} for `task` from `stats` = {task: {layer name: statistics}}: in every
    layer, `osrm_subspace` of the other tasks' statistics."""
    others = [t for t in stats if t != task]
    return {name: osrm_subspace([stats[t][name] for t in others], rank, statistic)
            for name in stats[task]}


def subspaces_of(stats, statistic, u, seed, cfg):
    """{task: {layer: A_t}} of every task for one statistic: the paper's (`osrm_init`), or this
    project's variants (extensions/subspaces.py). u: the LayerNorm directions {layer: u}."""
    if statistic in ("second_moment", "mean") and not cfg.osrm_skip_ln_direction:
        return {t: osrm_init(stats, t, cfg.rank, statistic) for t in cfg.tasks}
    skip = u if cfg.osrm_skip_ln_direction else None
    return {t: variant_init(stats, t, statistic, skip, seed, cfg) for t in cfg.tasks}


# 3. The initialisations: how each one builds a task's adapter

@dataclass(frozen=True)
class Init:
    """What one --inits name means; `initial_A` and `finetune_adapter` follow it."""
    statistic: str = None   # the OSRM statistic A_t comes from; None: a random A_t
    A_dist: str = "kaiming"  # how a random A_t is drawn (lora.random_As)
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
    "lora-gaussian": Init(A_dist="gaussian", help="plain LoRA with A ~ N(0, 1/r^2), PEFT's "
                                                  "gaussian init, the authors' baseline"),
    # this project's own, not the paper's: osrm-own, osrm-mean-random, lora-orthonormal
    **{name: Init(**fields) for name, fields in OUR_INITS.items()},
}


@dataclass
class Adapter:
    """One task's adapter: LoRA's A and B of every adapted layer, and the task's own head."""
    lora: dict               # {"layers.0.query.A": A, "layers.0.query.B": B, ...}
    head: torch.nn.Module    # the task's classifier, trained with the adapter, never merged
    training: dict = None    # how the training loss moved (finetune); None if not trained

    def task_vector(self, scale):
        """{layer name: dW = s B A} (lora.delta_w), the dense update that merging works on."""
        return {n: lora.delta_w(A, self.lora[f"{n}.B"], scale) for n, A in self.A().items()}

    def A(self):
        """{layer name: A} of the adapter as it is now."""
        return {k.removesuffix(".A"): v for k, v in self.lora.items() if k.endswith(".A")}


def task_seed(seed, task):
    """A per-task seed, so that each task's random A and head differ (stable across runs)."""
    return seed + zlib.crc32(task.encode()) % 10_000


def initial_A(encoder, init, task, seed, subspaces, cfg):
    """{layer name: A_t} that task `task`'s adapter starts from under `init`: OSRM's subspace
    for the OSRM inits (subspaces: {statistic: {task: {layer: A}}}), a seeded random draw
    (lora.random_As) for the plain ones."""
    spec = INITS[init]
    if spec.statistic is not None:
        return subspaces[spec.statistic][task]
    return lora.random_As(encoder, cfg.targets, cfg.rank, task_seed(seed, task), spec.A_dist)


def new_head(encoder, task, seed, cfg, train_rows=()):
    """A fresh head for `task`, seeded per task. osrm-min's own (cfg.head_bias_mean, on by
    default): a regression head's bias starts at the mean training target, not 0, so that
    STS-B's first steps do not collapse onto a near-constant prediction (results/README.md)."""
    torch.manual_seed(task_seed(seed, task.name))
    pooler = encoder.pooler if getattr(encoder, "has_pretrained_pooler", False) else None
    head = lora.ClassificationHead(encoder.config.hidden_size, task.num_labels,
                                   cfg.heads_pooling(encoder.config.pooling),
                                   encoder.config.hidden_dropout_prob, pooler)
    if not task.labels and cfg.head_bias_mean and train_rows:
        with torch.no_grad():
            head.classifier.bias.fill_(sum(label for *_, label in train_rows) / len(train_rows))
    return fastpath.use_fast_dropout(head.to(fastpath.device_of(encoder)))


def finetune_adapter(encoder, init, task_data, A_init, seed, cfg):
    """Task's adapter under `init`, fine-tuned (section 3 of the paper, then its fine-tuning):
    every adapted layer starts from A = A_init[layer] and B = 0, A trainable or not (the
    init's `train_A`), with a fresh head; task_data: the task's data.TaskData. Returns the
    Adapter; the encoder is left without LoRA."""
    task = task_data.task
    head = new_head(encoder, task, seed, cfg, task_data.train)
    lora.add_lora(encoder, cfg.targets, cfg.rank, cfg.alpha, cfg.lora_dropout, A_init)
    for m in lora.lora_layers(encoder).values():
        m.A.requires_grad_(INITS[init].train_A)
    s = task_seed(seed, task.name)
    batches = lambda epoch: data.make_batches(task_data.train, cfg.batch_size, shuffle=True,
                                              seed=s + epoch, group_by_length=cfg.group_by_length,
                                              pad_id=task_data.pad_id)
    torch.manual_seed(s)  # dropout masks
    training = train.finetune(encoder, head, batches, cfg.training, f"{init}/{task.name}")
    adapter = Adapter(lora.lora_state(encoder), head, training)
    lora.remove_lora(encoder)
    return adapter


def osrm_post(A, B, A_osrm):
    """The post-hoc variant (the authors' post_OSRM): a trained adapter dW = s B A becomes
    dW A_o^T A_o, no training. That is again a rank-r adapter, (A', B') = (A_o, B A A_o^T)."""
    return A_osrm.clone(), B @ (A @ A_osrm.T)  # (r, d_in), (d_out, r) @ (r, r)


def post_hoc_adapter(plain, A_osrm):
    """osrm-post: plain LoRA's trained adapter, every layer projected by `osrm_post`."""
    state = {}
    for layer, A_o in A_osrm.items():
        state[f"{layer}.A"], state[f"{layer}.B"] = osrm_post(plain.lora[f"{layer}.A"],
                                                             plain.lora[f"{layer}.B"], A_o)
    return Adapter(state, plain.head)


# 4. Scoring

@dataclass(frozen=True)
class Scoring:
    """Which model a score is of: the pretrained encoder with the updates of `merged` ({task:
    Adapter}) under `init` and `seed`, merged by `method` ("none": one adapter alone; "ta:own":
    one task's own update alone, as ta would scale it) at `lam`; scored on `splits`: "dev",
    and "heldout" (training rows that no adapter trains on) where those pick lambda."""
    seed: int
    init: str
    method: str
    lam: float
    merged: dict
    splits: tuple = ("dev",)


def score(encoder, adapters, scoring, prepared, cfg):
    """Score rows of the model as it is now: each task of `adapters` ({task: Adapter}) with its
    own head, on each of `scoring.splits`: its score (x100), its GLUE metrics and its
    prediction on every row (train.evaluate), in the order of the rows' batches."""
    rows = []
    for split in scoring.splits:
        for t, adapter in adapters.items():
            value, metrics, predictions = train.evaluate(
                encoder, adapter.head, prepared[t].task, getattr(prepared[t], f"{split}_batches"),
                fastpath.device_of(encoder), described(scoring, t))
            rows.append({"seed": scoring.seed, "init": scoring.init, "merge": scoring.method,
                         "lambda": scoring.lam, "task": t, "split": split, "score": value,
                         "metrics": metrics, "predictions": predictions})
    return rows


def described(scoring, task):
    """A score in words, with what to try if the model's outputs are not finite."""
    if scoring.method == "none":
        return f"{scoring.init}/{task} alone (check the checkpoint, or try a lower learning rate)"
    at = "" if scoring.lam is None else f" at lambda {scoring.lam:g} (try smaller lambdas)"
    return f"{scoring.init}/{task} merged by {scoring.method}{at}"


# 5. Merging

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
        rows, pad_id = prepared[t].train, prepared[t].pad_id
        with lora.carrying(encoder, adapter.lora, cfg.targets, cfg.rank, cfg.alpha):
            layers = lora.lora_layers(encoder)
            if "regmean" in cfg.merges:
                batches = data.make_batches(rows[:cfg.regmean_samples], cfg.batch_size,
                                            group_by_length=True, pad_id=pad_id)
                stats = collect_statistics(encoder, batches, list(layers))
                out.setdefault("regmean", []).append(regmean_grams(stats, cfg.regmean_grams))
            if "fisher" in cfg.merges:
                examples = data.make_batches(rows[:cfg.fisher_samples], 1, pad_id=pad_id)
                out.setdefault("fisher", []).append(
                    fisher.fisher_diagonal(encoder, adapter.head, examples, layers, fastpath.device_of(encoder)))
    return out


OWN_AT_LAMBDA = ("ta", "ties")  # --own-at-lambda: the merges whose own-update part is scored


def merged_scores(encoder, adapters, scoring, statistics, prepared, cfg):
    """Score rows (`score`) with the updates of `adapters` merged by `scoring.method` at
    `scoring.lam` into the pretrained weights, each task scored with its own head. EMR gives
    each task its own update (merge.emr_updates), so each task is scored on its own model."""
    task_vectors = [a.task_vector(cfg.alpha / cfg.rank) for a in adapters.values()]
    method = scoring.method.removesuffix(":own")
    if method == "emr":
        rows = []
        for (t, adapter), update in zip(adapters.items(), merge.emr_updates(task_vectors)):
            with lora.merged_into_weights(encoder, update):
                rows += score(encoder, {t: adapter}, scoring, prepared, cfg)
        return rows
    merged = merge.merge_task_vectors(task_vectors, method, scoring.lam, cfg.merging,
                                      statistics.get(method), scoring.seed)
    with lora.merged_into_weights(encoder, merged):
        return score(encoder, adapters, scoring, prepared, cfg)


# 6. Interference

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


# 7. The experiment

@dataclass
class Seed:
    """What every init of one seed starts from (steps 1-2)."""
    seed: int
    prepared: dict    # {task: data.TaskData}
    stats: dict       # {task: {layer: statistics}} on each task's k training examples
    measured: dict    # the same on held-out dev rows, to measure on
    subspaces: dict   # {statistic: {task: {layer: A_t}}}, for the statistics the inits use
    energy: list      # what the subspaces read (extensions/measures.describe_subspaces)
    spectrum: list


@dataclass
class InitRun:
    """What one init of one seed made (steps 3-6), for results.json."""
    adapters: dict = field(default_factory=dict)   # {task: Adapter}
    training: dict = field(default_factory=dict)   # {task: how its loss moved}, those trained
    movement: dict = field(default_factory=dict)   # {task: measures.movement}
    rows: list = field(default_factory=list)       # score rows (`score`), in the order made
    merge_statistics: tuple = ((), 0.0)            # (names, seconds) of merge_statistics
    interference: dict = field(default_factory=dict)  # {"interference": matrix, "..._fit": ...}


def run_seed(cfg, data_dir, seed, encoder, tokenizer, inputs):
    """Steps 1-2 of one seed: each task's rows, its layer statistics, OSRM's subspaces.
    inputs: the fingerprints of the input files in data_dir (resume.fingerprint_inputs)."""
    prepared = prepare(cfg, data_dir, seed, tokenizer, inputs)
    # 1. each task's layer statistics, from the frozen pretrained encoder; and the same on
    # held-out rows, to measure on
    stats = layer_statistics(encoder, cfg, prepared, "stats")
    measured = layer_statistics(encoder, cfg, prepared, "measure")
    # 2. OSRM's subspace of every task, once per statistic that the inits use
    u = layernorm_directions(encoder, stats[cfg.tasks[0]])  # the LayerNorm directions
    subspaces = {s: subspaces_of(stats, s, u, seed, cfg)
                 for s in dict.fromkeys(INITS[i].statistic for i in cfg.inits if INITS[i].statistic)}
    energy, spectrum = measures.describe_subspaces(stats, measured, subspaces, u, cfg.rank, seed)
    return Seed(seed, prepared, stats, measured, subspaces, energy, spectrum)


def run_init(cfg, init, encoder, seed, trained=None):
    """Steps 3-6 of one seed (`run_seed`'s Seed) under one init: each task's adapter, built as
    the init says and fine-tuned, scored alone; every merge at every lambda; the interference.
    trained: {init: InitRun} of the inits before (the post-hoc ones project plain LoRA's)."""
    spec, out = INITS[init], InitRun()
    # 3-4. each task's adapter, built as the init says and fine-tuned; scored alone
    for t in cfg.tasks:
        if spec.post_hoc:
            adapter = post_hoc_adapter(trained["lora"].adapters[t], seed.subspaces[spec.statistic][t])
        else:
            A_init = initial_A(encoder, init, t, seed.seed, seed.subspaces, cfg)
            adapter = finetune_adapter(encoder, init, seed.prepared[t], A_init, seed.seed, cfg)
            out.training[t] = adapter.training
            out.movement[t] = measures.movement(A_init, adapter.A(), seed.measured, t)
        out.adapters[t] = adapter
        with lora.carrying(encoder, adapter.lora, cfg.targets, cfg.rank, cfg.alpha):
            rows = score(encoder, {t: adapter}, Scoring(seed.seed, init, "none", None, {t: adapter}),
                         seed.prepared, cfg)
        print(f"{init}/{t}: individual score {rows[0]['score']:.2f}")
        out.rows += rows
    # 5. every merge at every lambda, each task scored with its own head
    t0 = time.time()
    statistics = merge_statistics(encoder, out.adapters, seed.prepared, cfg)
    out.merge_statistics = (list(statistics), time.time() - t0)
    if statistics:
        print(f"{init}: statistics for {', '.join(statistics)} in {time.time() - t0:.1f}s")
    for method in cfg.merges:
        for lam in cfg.lambdas(method):  # --lams, or the merge's own
            t0 = time.time()
            splits = ("dev", "heldout") if lam is not None and cfg.select_on == "heldout" else ("dev",)
            rows = merged_scores(encoder, out.adapters, Scoring(seed.seed, init, method, lam,
                                 out.adapters, splits), statistics, seed.prepared, cfg)
            out.rows += rows
            dev = [r["score"] for r in rows if r["split"] == "dev"]
            print(f"{init}/{method}{'' if lam is None else f' (lambda {lam:g})'}: average "
                  f"{sum(dev) / len(dev):.2f} ({time.time() - t0:.0f}s)")
            if cfg.own_at_lambda and method in OWN_AT_LAMBDA:  # each task's own update alone
                for t, adapter in out.adapters.items():
                    own = Scoring(seed.seed, init, f"{method}:own", lam, {t: adapter})
                    out.rows += merged_scores(encoder, {t: adapter}, own, {}, seed.prepared, cfg)
    # 6. how much each adapter writes on the other tasks' inputs: on held-out rows, and on
    # the rows OSRM's subspace was fitted to (which flatters OSRM)
    task_vectors = {t: a.task_vector(cfg.alpha / cfg.rank) for t, a in out.adapters.items()}
    out.interference = {"interference": interference(task_vectors, seed.measured),
                        "interference_fit": interference(task_vectors, seed.stats)}
    return out


def prepare(cfg, data_dir, seed, tokenizer, inputs):
    """Each task's rows for this seed (data.prepare_tasks), read from the GLUE files in data_dir
    whose content `inputs` fingerprinted (resume.fingerprint_inputs; a file changed since is an
    error)."""
    return data.prepare_tasks(cfg.tasks, data_dir, tokenizer, cfg.sampling, seed, inputs)


def statistics_batches(task_data, rows, cfg):
    """The batches `layer_statistics` reads of one task (an entry of `prepare`'s)."""
    return data.make_batches(getattr(task_data, rows), cfg.batch_size, group_by_length=True,
                             pad_id=task_data.pad_id)


def layer_statistics(encoder, cfg, prepared, rows):
    """{task: {layer name: statistics}} on each task's k examples (rows "stats"), or on its
    held-out measurement rows ("measure"); order does not matter, so batches are cut from
    length-sorted examples, with little padding."""
    lora.remove_lora(encoder)
    names = list(lora.target_layers(encoder, cfg.targets))
    t0 = time.time()
    stats = {}
    for n, p in prepared.items():
        stats[n] = collect_statistics(encoder, statistics_batches(p, rows, cfg), names)
    what = (f"{cfg.osrm_samples} training examples" if rows == "stats"
            else f"{cfg.measure_samples} held-out dev rows (to measure on)")
    print(f"layer statistics: {what} per task, {len(names)} layers, {time.time() - t0:.1f}s")
    return stats


def run(cfg, located, encoder, tokenizer, inputs):
    """The experiment on `located`'s data and device, seed by seed (`run_seed`, then `run_init`
    per init): results.json's dict; around it the speed path, reuse, records and workers."""
    groups = parallel.init_groups(cfg.inits, [i for i in cfg.inits if INITS[i].post_hoc])
    n = min(parallel.workers(cfg.workers, located.device), len(cfg.seeds) * len(groups))
    loaded = resume.encoder_digest(encoder) if n > 1 else None  # what each worker must load too
    encoder = fastpath.speed_up(encoder.to(located.device))  # the same modules, the speed path on
    store = resume.Store(cfg, located.device, inputs)
    results = record.new_results(cfg, inputs)
    pool = parallel.Workers(cfg, located, n, loaded, encoder.config) if n > 1 else contextlib.nullcontext()
    with pool as workers, resume.reusing(store, sys.modules[__name__]):
        for s in cfg.seeds:
            print(f"seed {s}")
            seed = run_seed(cfg, located.data_dir, s, encoder, tokenizer, inputs)
            record.seed(results, seed)
            if workers is not None:  # every init of the seed in a worker process; results later
                workers.run_inits(cfg, seed, store.inputs, groups)
                continue
            trained = {}
            for init in cfg.inits:
                trained[init] = run_init(cfg, init, encoder, seed, trained)
                record.init(results, s, init, trained[init])
        if workers is not None:  # each score saved as its job ends; results in one process's order
            done = workers.wait(lambda job: store.scores.add(job[1]))  # {(seed, group): job}
            runs = {(s, i): r for (s, _), (by_init, _) in done.items() for i, r in by_init.items()}
            for s in cfg.seeds:
                for init in cfg.inits:
                    record.init(results, s, init, runs[s, init])
    return results


def main(argv=None):
    """python osrm_min.py --tasks sst2,mrpc: the command line (study/cli.py) around `run`."""
    return cli.main(argv, {name: init.help for name, init in INITS.items()}, run)


if __name__ == "__main__":
    sys.exit(main())
