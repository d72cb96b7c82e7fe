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
4. `finetune` and `evaluate`: LoRA fine-tuning with AdamW and a linear schedule; GLUE metrics.
5. Merging, on the dense dW_t = s B_t A_t (merge.py), with each task's own head.
6. `interference`: how much each adapter writes on the other tasks' inputs,
   ||dW_t H_j|| / ||dW_j H_j||, from the same statistics; `subspace_energy`.
7. `run_seed`: the experiment, top to bottom; `main`: the command line (settings in config.py,
   resuming in resume.py, the tables in report.py).
"""

import sys
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import checkpoint
import config
import data
import hub
import lora
import merge
import report
import resume
import tokenization
from config import ExperimentError


# 1. Statistics of each layer's inputs

def collect_statistics(encoder, batches, layer_names):
    """Per layer, S = H^T H / n and mu = the mean of H's rows, padding excluded.

    H (n x d_in) stacks the inputs that this very layer sees on the given batches, one row per
    real token, computed by the frozen pretrained model (the paper's section 3). Forward hooks
    read the inputs; nothing is kept but running sums, in float64.
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
    unpad, encoder.unpad = encoder.unpad, False  # every layer sees (B, T, d_in)
    try:
        with torch.inference_mode():
            for batch in batches:
                mask = batch["attention_mask"]
                encoder(batch["input_ids"], batch["token_type_ids"], mask)
    finally:
        encoder.unpad = unpad
        for h in handles:
            h.remove()
    return {name: {"S": s["HtH"] / s["n"], "mu": s["h"] / s["n"], "n": s["n"]}
            for name, s in sums.items()}


# 2. The OSRM subspace

def osrm_subspace(stats_of_others, rank, statistic="second_moment"):
    """A_t (rank x d_in) with orthonormal rows for one layer, from the other tasks' statistics.

    "second_moment" (the paper): the eigenvectors of S_{-t} = sum_j S_j with the `rank`
    smallest eigenvalues, which minimise tr(A S_{-t} A^T) subject to A A^T = I (Ky Fan's
    theorem). S_j is the uncentred second moment H_j^T H_j / n_j, not a covariance: the mean
    input passes through dW_t too.
    "mean" (the authors' code): the last `rank` right singular vectors of X = [mu_j]_j, part of
    a basis of X's null space, so that A mu_j = 0 for every other task j.
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


def osrm_init(stats, task, rank, statistic):
    """{layer name: A_t} for `task` from `stats` = {task: {layer name: statistics}}."""
    others = [t for t in stats if t != task]
    return {name: osrm_subspace([stats[t][name] for t in others], rank, statistic)
            for name in stats[task]}


# 3. The initialisations: how each one builds a task's adapter

@dataclass(frozen=True)
class Init:
    """What one --inits name means; `build_adapter` follows it."""
    statistic: str = None   # the OSRM statistic A_t comes from; None: a random A_t
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
}


@dataclass
class Adapter:
    """One task's adapter: LoRA's A and B of every adapted layer, and the task's own head."""
    lora: dict               # {"layers.0.query.A": A, "layers.0.query.B": B, ...}
    head: torch.nn.Module    # the task's classifier, trained with the adapter, never merged

    def task_vector(self, scale):
        """{layer name: dW = s B A}, the dense update that merging works on (never A and B
        apart, which would create cross terms B_i A_j)."""
        layers = [k.removesuffix(".A") for k in self.lora if k.endswith(".A")]
        return {n: scale * self.lora[f"{n}.B"] @ self.lora[f"{n}.A"] for n in layers}


def build_adapter(encoder, init, task, cfg, prepared, subspaces, trained, store):
    """Task `task`'s adapter under `init`.

    lora:            A random, B = 0, fine-tuned.
    osrm, osrm-mean: A = OSRM's subspace for the task (from the init's statistic), B = 0,
                     fine-tuned with A and B trainable, as the paper does.
    osrm-frozen:     the same with A kept fixed.
    osrm-post:       no training: plain LoRA's adapter (A, B) becomes (A_o, B A A_o^T).
    A trained adapter saved by an earlier run with the same settings is loaded instead.
    """
    spec = INITS[init]
    if spec.post_hoc:
        plain = trained["lora"][task]
        A_osrm = subspaces[spec.statistic][task]
        state = {}
        for layer, A_o in A_osrm.items():
            state[f"{layer}.A"], state[f"{layer}.B"] = osrm_post(
                plain.lora[f"{layer}.A"], plain.lora[f"{layer}.B"], A_o)
        return Adapter(state, plain.head)
    seed = task_seed(cfg.seed, task)
    uses_osrm = spec.statistic is not None
    saved = store.load_adapter(cfg, task, init, uses_osrm)
    head = new_head(encoder, prepared[task]["task"], cfg, seed)
    if saved is not None:
        head.load_state_dict(saved[1])
        return Adapter(saved[0], head)
    A_init = subspaces[spec.statistic][task] if uses_osrm else None
    lora.add_lora(encoder, cfg.targets, cfg.rank, cfg.alpha, cfg.lora_dropout, A_init, seed)
    for m in lora.lora_layers(encoder).values():
        m.A.requires_grad_(spec.train_A)
    train = prepared[task]["train"]
    batches = lambda epoch: data.make_batches(train, cfg.batch_size, shuffle=True,
                                              seed=seed + epoch, group_by_length=cfg.group_by_length,
                                              pad_id=prepared[task]["pad_id"])
    torch.manual_seed(seed)  # dropout masks
    t0 = time.time()
    finetune(encoder, head, batches, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.warmup,
             cfg.max_grad_norm, cfg.device, desc=f"{init}/{task}")
    print(f"{init}/{task}: trained in {time.time() - t0:.0f}s")
    adapter = Adapter(lora.lora_state(encoder), head)
    lora.remove_lora(encoder)
    store.save_adapter(cfg, task, init, uses_osrm, adapter.lora, head.state_dict())
    return adapter


def osrm_post(A, B, A_osrm):
    """The post-hoc variant (the authors' post_OSRM): a trained adapter dW = s B A becomes
    dW A_o^T A_o, no training. That is again a rank-r adapter, (A', B') = (A_o, B A A_o^T)."""
    return A_osrm.clone(), B @ (A @ A_osrm.T)


# 4. Fine-tuning and evaluation

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


# 5. Merging: merge.py merges the task vectors {layer: dW_t}; lora.merged_into_weights puts
#    W0 + merged in the encoder, and each task is scored there with its own head (run_seed).

def lambdas(cfg, method):
    """The lambdas a merge is evaluated at: --lams, else the method's default; avg has 1/T."""
    if method == "avg":
        return [1 / len(cfg.tasks)]
    return list(cfg.lams) or [cfg.lam_ties if method.endswith("ties") else cfg.lam_ta]


# 6. Interference, and the energy OSRM's subspace reads

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


# 7. The experiment

def run_seed(cfg, encoder, tokenizer, store, results):
    """Everything for one seed: statistics, subspaces, every init's adapters, their interference,
    every merge at every lambda; rows and matrices are appended to `results`."""
    prepared = prepare_tasks(cfg, tokenizer)
    # 1. each task's layer statistics, from the frozen pretrained encoder
    stats = layer_statistics(encoder, cfg, prepared)
    # 2. OSRM's subspace of every task, once per statistic that the inits use
    statistics = dict.fromkeys(INITS[i].statistic for i in cfg.inits if INITS[i].statistic)
    subspaces = {s: {t: osrm_init(stats, t, cfg.rank, s) for t in cfg.tasks} for s in statistics}
    for s, by_task in subspaces.items():
        for t, A_init in by_task.items():
            own, others = subspace_energy(A_init, stats, t)
            results["subspace_energy"].append({"seed": cfg.seed, "stat": s, "task": t,
                                               "own": own, "others": others})
    trained = {}
    for init in cfg.inits:
        # 3-4. each task's adapter, built as the init says and fine-tuned; scored alone
        adapters = {}
        for t in cfg.tasks:
            adapters[t] = build_adapter(encoder, init, t, cfg, prepared, subspaces, trained, store)
            with lora.carrying(encoder, adapters[t].lora, cfg.targets, cfg.rank, cfg.alpha):
                score = score_tasks(encoder, {t: adapters[t].head}, prepared, cfg, store,
                                    results, init, "none", None)[t]
            print(f"{init}/{t}: individual score {score:.2f}")
        trained[init] = adapters
        task_vectors = {t: a.task_vector(cfg.alpha / cfg.rank) for t, a in adapters.items()}
        heads = {t: a.head for t, a in adapters.items()}
        # 5. every merge at every lambda, each task scored with its own head
        for method in cfg.merges:
            for lam in lambdas(cfg, method):
                t0 = time.time()
                merged = merge.merge_task_vectors(list(task_vectors.values()), method, lam,
                                                  cfg.ties_keep, cfg.ties_scope, cfg.dare_p, cfg.seed)
                with lora.merged_into_weights(encoder, merged):
                    scores = score_tasks(encoder, heads, prepared, cfg, store, results, init,
                                         method, lam)
                print(f"{init}/{method} (lambda {lam:g}): average "
                      f"{report.task_mean(scores):.2f} ({time.time() - t0:.0f}s)")
        # 6. how much each adapter writes on the other tasks' inputs
        results["interference"].append({"seed": cfg.seed, "init": init, "tasks": list(cfg.tasks),
                                        "matrix": interference(task_vectors, stats)})


def score_tasks(encoder, heads, prepared, cfg, store, results, init, method, lam):
    """{task: score} of the model now in the encoder, each task with its own head; scores
    computed by an earlier run with the same settings are reused (resume.py)."""
    rows = [store.scores.get(cfg.seed, init, method, lam, t) for t in heads]
    if None in rows:
        rows = [resume.result_row(cfg.seed, init, method, lam, t,
                                  *evaluate(encoder, head, prepared[t]["task"],
                                            prepared[t]["dev_batches"], cfg.device))
                for t, head in heads.items()]
        store.scores.add(rows)
    results["rows"] += rows
    return {r["task"]: r["score"] for r in rows}


def task_seed(seed, task):
    """A per-task seed, so that each task's random A and head differ (stable across runs)."""
    return seed + zlib.crc32(task.encode()) % 10_000


def prepare_tasks(cfg, tokenizer):
    """Load, sample and tokenise every task once:
    {task: {"task", "train", "stats", "dev_batches", "pad_id"}}."""
    prepared = {}
    for name in cfg.tasks:
        task = data.TASKS[name]
        train, skipped_train = data.load_split(task, "train", Path(cfg.data_dir))
        dev, skipped_dev = data.load_split(task, "dev", Path(cfg.data_dir))
        for split, n in (("train", skipped_train), ("dev", skipped_dev)):
            if n:
                print(f"note: {name} {split}: skipped {n} malformed rows")
        sample = data.train_subset(name, train, cfg.train_samples, cfg.seed)
        encoded = data.encode_examples(tokenizer, sample, cfg.max_length)
        prepared[name] = {
            "task": task,
            "train": encoded,
            # OSRM's k examples per task are the first k of the (shuffled) training subset
            "stats": encoded[:cfg.osrm_samples],
            # sorted by length (order does not change a metric), which cuts most of the padding
            "dev_batches": data.make_batches(data.encode_examples(tokenizer, dev, cfg.max_length),
                                             cfg.eval_batch_size, group_by_length=True,
                                             pad_id=tokenizer.pad_id),
            "pad_id": tokenizer.pad_id,
        }
        print(f"{name}: {len(sample)} of {len(train)} training rows, {len(dev)} dev rows")
    return prepared


def new_head(encoder, task, cfg, seed):
    torch.manual_seed(seed)
    pooler = encoder.pooler if getattr(encoder, "has_pretrained_pooler", False) else None
    return lora.ClassificationHead(encoder.config.hidden_size, task.num_labels, cfg.pooling,
                                   encoder.config.hidden_dropout_prob, pooler).to(cfg.device)


def layer_statistics(encoder, cfg, prepared):
    """{task: {layer name: statistics}} on each task's k examples (order does not matter, so
    batches are cut from length-sorted examples, with little padding)."""
    lora.remove_lora(encoder)
    names = list(lora.target_layers(encoder, cfg.targets))
    t0 = time.time()
    stats = {}
    for n, p in prepared.items():
        batches = data.make_batches(p["stats"], cfg.batch_size, group_by_length=True,
                                    pad_id=p["pad_id"])
        stats[n] = collect_statistics(encoder, [to_device(b, cfg.device) for b in batches], names)
    print(f"layer statistics: {cfg.osrm_samples} examples per task, {len(names)} layers, "
          f"{time.time() - t0:.1f}s")
    return stats


def run(cfg, encoder, tokenizer):
    """The whole experiment, seed by seed; returns the results dict written to results.json."""
    encoder.to(cfg.device)
    store = resume.Store(cfg)
    results = {"config": resume.plain(asdict(cfg)), "rows": [], "interference": [],
               "subspace_energy": []}
    for seed in cfg.seeds:
        print(f"seed {seed}")
        run_seed(replace(cfg, seed=seed), encoder, tokenizer, store, results)
    return results


# The command line

def main(argv=None):
    t0 = time.time()
    try:
        cfg = config.parse_command_line(argv, {k: v.help for k, v in INITS.items()}, merge.METHODS)
        resume.check_writable(cfg.out)
        encoder, pooling = checkpoint.load_checkpoint(cfg.model)
        cfg.pooling = pooling if cfg.pooling == "auto" else cfg.pooling
        config.check_against_model(cfg, min(m.in_features for m in lora.target_layers(
            encoder, cfg.targets).values()), encoder.config.max_length)
        tokenizer = tokenization.load_tokenizer(cfg.model)
        print(config.banner(cfg), flush=True)
        results = run(cfg, encoder, tokenizer)
        results["wall_time_s"] = round(time.time() - t0, 1)
        resume.write_json_atomic(results, Path(cfg.out) / "results.json")
        text = report.summary(results)
        resume.write_text_atomic(text + "\n", Path(cfg.out) / "summary.txt")
        figures = report.write_figures(results, cfg.out)
    except (data.DataError, checkpoint.CheckpointError, hub.DownloadError, ExperimentError) as e:
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
