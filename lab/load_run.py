"""A finished run, opened for a few lines of Python (LAB.md, exercises 2 and 3).

    import sys; sys.path[:0] = [".", "lab"]
    from load_run import load
    run = load("runs/sst2-stsb")                     # what `python osrm_min.py --lab` wrote
    X = run.layer_inputs("stsb", "layers.2.value")   # (tokens, 384): what that layer reads
    dW = run.task_vector("lora", "sst2")             # {layer name: s B A} of the saved adapter

It reads the run's results.json for its settings, the pretrained model and the training rows
the run took for OSRM's statistics (made by the run's own code, osrm_min.prepare, from files
whose content must be what the run fingerprinted: model, tokenizer and every GLUE file), and
the adapters the run saved. Nothing is trained and nothing is written. A run
that is not there or cannot be read, or a task, layer or adapter it does not have, is a
LabError, which a script ends with in one line, as every osrm-min command does.
"""

import contextlib
import io
import json
import sys
from dataclasses import fields
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrained import checkpoint  # noqa: E402
import data  # noqa: E402
import lora  # noqa: E402
import osrm_min  # noqa: E402
from extensions import carving  # noqa: E402
from pretrained import tokenization  # noqa: E402
from study import config, resume, tables  # noqa: E402


class LabError(Exception):
    """What a run cannot give; an uncaught one is printed as one line (`one_line`)."""


def one_line(kind, error, trace):
    if issubclass(kind, LabError):
        print(f"error: {error}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, trace)


sys.excepthook = one_line  # `python lab/exercise2.py` before exercise 1: one line, exit 1


class Named(dict):
    """A dict whose missing key is a LabError that says which keys there are."""

    def __init__(self, what, items):
        super().__init__(items)
        self.what = what

    def __missing__(self, key):
        raise LabError(f"{self.what} has no {key!r}, only {', '.join(map(str, self))}")


def where(cfg, inputs):
    """(model, GLUE folder) on this machine whose content is what the run read (results.json's
    "inputs"): where the run found them, or, for a run folder handed out from another machine
    (LAB.md's plan for slow machines), the installed default model and $GLUE_DIR."""
    model = cfg["model"] if Path(cfg["model"]).is_dir() else str(config.default_model_dir())
    found = resume.fingerprint_inputs(model)
    for kind in ("model", "tokenizer"):
        if found[kind] != inputs[kind]:
            raise LabError(f"the {kind} files in {model} are not the ones the run used "
                           f"({cfg['model']}); run it again")
    data_dir = cfg["data_dir"] if Path(cfg["data_dir"]).is_dir() else str(config.find_data_dir(None))
    for t in cfg["tasks"]:
        paths, carved = carving.split_sources(data.TASKS[t], data_dir, cfg.get("carve_splits", 0))
        if carved != inputs.get(f"carved:{t}"):
            raise LabError(f"{data_dir}/{data.TASKS[t].folder} does not hold the splits the run "
                           f"read (carved: {inputs.get(f'carved:{t}')}); set GLUE_DIR to the GLUE "
                           f"copy the run was made with, or run it again")
        for split, path in paths.items():
            if resume.file_digest(path) != inputs[f"{split}:{t}"]:
                raise LabError(f"{path} is not the file the run read; set GLUE_DIR to the GLUE "
                               f"copy the run was made with, or run it again")
    return model, data_dir


def settings(saved):
    """The run's Config, as results.json saved it."""
    known = {f.name for f in fields(config.Config)}
    return config.Config(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in saved.items() if k in known})


class Run:
    def __init__(self, out, seed=None):
        self.out = Path(out)
        path = self.out / "results.json"
        if not path.exists():
            raise LabError(f"{path} is missing: run `python osrm_min.py --lab` first")
        try:
            self.results = json.loads(path.read_text(encoding="utf-8"))
            self.cfg = cfg = self.results["config"]
            self.seed = cfg["seeds"][0] if seed is None else seed
            if self.seed not in cfg["seeds"]:
                raise LabError(f"the run in {self.out} has seeds {cfg['seeds']}, not {self.seed}")
            self.tasks = cfg["tasks"]
            model, data_dir = where(tables.resolved_settings(self.results), self.results["inputs"])
            self.encoder, _ = checkpoint.load_checkpoint(model)
            self.encoder.eval()  # no dropout: the inputs the frozen model sees
            self.layers = list(lora.target_layers(self.encoder, cfg["targets"]))
            tokenizer = tokenization.load_tokenizer(model)
            run_cfg = settings(cfg)
            with contextlib.redirect_stdout(io.StringIO()):  # the run printed what it read
                prepared = osrm_min.prepare(run_cfg, data_dir, self.seed, tokenizer, self.results["inputs"])
            # the very batches the run's statistics read (osrm_min.layer_statistics)
            self.batches = Named(f"the run in {self.out}", {
                name: osrm_min.statistics_batches(p, "stats", run_cfg) for name, p in prepared.items()})
        except (checkpoint.CheckpointError, data.DataError, config.ExperimentError,
                OSError) as e:  # moved or changed
            raise LabError(f"the run in {self.out} cannot be opened: {e}") from None
        except (ValueError, KeyError, TypeError, IndexError, RecursionError) as e:
            raise LabError(f"{path} does not hold the results of a finished osrm-min run "
                           f"({type(e).__name__}: {str(e)[:100]}); run it again") from None
        self._stats = None

    def layer_inputs(self, task, layer):
        """H: the inputs that `layer` of the frozen pretrained encoder sees on the task's k
        rows, one row per real token (padding left out), float64."""
        if layer not in self.layers:
            raise LabError(f"the run adapts no layer {layer!r}; it adapts {', '.join(self.layers)}")
        module, rows, mask = dict(self.encoder.named_modules())[layer], [], None
        hook = module.register_forward_hook(lambda m, inputs, out: rows.append(inputs[0][mask].double()))
        try:
            with torch.inference_mode():
                for b in self.batches[task]:
                    mask = b["attention_mask"]
                    self.encoder(b["input_ids"], b["token_type_ids"], mask)
        finally:
            hook.remove()
        return torch.cat(rows)

    def statistics(self):
        """{task: {layer: {"S", "mu", "n"}}}, as osrm_min.collect_statistics gives them."""
        if self._stats is None:
            self._stats = Named(f"the run in {self.out}", {
                t: Named("its statistics", osrm_min.collect_statistics(self.encoder, b, self.layers))
                for t, b in self.batches.items()})
        return self._stats

    def adapter(self, init, task):
        """The saved LoRA state {"layers.0.query.A": A, ...B: B} of one adapter, the very one
        the run scored (a LabError if the file now holds another)."""
        path = self.out / "adapters" / f"{init}-{task}-seed{self.seed}.pt"
        if not path.exists():
            raise LabError(f"{path} is missing: run with --inits {init} first")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            lora_state, head = saved["lora"], saved["head"]
            # the digest the run's score of this adapter alone holds (resume.adapter_digest)
            found = resume.digest({task: resume.tensors_digest(
                {**lora_state, **{f"head.{k}": v for k, v in head.items()}})})
        except Exception as e:  # truncated, or not an adapter file
            raise LabError(f"{path} cannot be read ({type(e).__name__}); run with --inits "
                           f"{init} again") from None
        scored = [r.get("adapters") for r in self.results["rows"] if (r["seed"], r["init"], r["task"],
                  r["merge"]) == (self.seed, init, task, "none")]
        if found not in scored:
            raise LabError(f"{path} is not the adapter the run in {self.out} scored (trained "
                           f"again since?); run the command that wrote it again")
        return lora_state

    def movement(self):
        """{init: {task: entry}} of this seed, as results.json's "movement" holds them: the
        share of its own task's and of the other tasks' input energy that the adapter's A reads
        at the start of training (own_start, others_start) and at its end (own_end,
        others_end), on held-out rows, and how much of A's row space stayed (overlap, 1: A did
        not turn)."""
        moved = Named(f"the run in {self.out}", {})
        for e in self.results.get("movement", []):
            if e["seed"] == self.seed:
                moved.setdefault(e["init"], Named("its movement", {}))[e["task"]] = e
        return moved

    def task_vector(self, init, task):
        """{layer: dW = (alpha / r) B A}: what merging adds to the pretrained weights."""
        scale = self.cfg["alpha"] / self.cfg["rank"]
        return Named("its task vector", osrm_min.Adapter(self.adapter(init, task), None).task_vector(scale))


def load(out, seed=None):
    """The run written into `out` (seed: one of its --seeds; default the first)."""
    return Run(out, seed)
