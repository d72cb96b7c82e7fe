"""osrm-min's analysis of PEFT LoRA adapters trained elsewhere on one base model (`python -m
interop.peft_format analyse`): each task scored with its own adapter and head, alone and under
each merge at each lambda; how much each adapter writes on the other tasks' inputs (the
interference matrix, osrm_min.interference); and the input energy each adapter's A reads of
its own task and of the others' (extensions/measures.subspace_energy on A's row space). Measured on GLUE
dev rows, with the method's own functions.
"""

import statistics
from dataclasses import replace
from pathlib import Path

import data
import lora
import merge
import osrm_min
from extensions import measures
from interop.peft_format import AdapterError, read_adapter
from pretrained import checkpoint, tokenization
from study import config, resume


def analyse(args):
    """The command's work; returns the lines it prints (also written to --out/summary.txt)."""
    pairs = [a.partition("=") for a in args.adapters]
    if any(not folder for _, _, folder in pairs):
        raise AdapterError("give each adapter as task=FOLDER, e.g. sst2=peft/sst2")
    tasks = [data.task_key(t) for t, _, _ in pairs]
    if len(set(tasks)) != len(tasks) or len(tasks) < 2 or any(t not in data.TASKS for t in tasks):
        raise AdapterError(f"need two or more different GLUE tasks, from {', '.join(data.TASKS)}")
    merges = [m for m in args.merges.split(",") if m]
    bad = [m for m in merges if m not in merge.METHODS or m in ("regmean", "fisher")]
    if bad:
        raise AdapterError(f"--merges {bad[0]}: analyse runs the merges that need no training data "
                           f"(ta, avg, ties, dare-ta, dare-ties, emr)")
    lams = [float(x) for x in args.lams.split(",") if x]
    cfg = config.Config(tasks=tuple(tasks), model=args.model, data_dir=args.data_dir,
                        train_samples=1, dev_samples=args.dev_samples,
                        measure_samples=args.measure_samples)
    located = config.locate_inputs(cfg)
    encoder, _ = checkpoint.load_checkpoint(located.model)
    encoder.eval()
    model_type = encoder.config.model_type
    read = {t: read_adapter(folder, encoder, model_type) for t, (_, _, folder) in zip(tasks, pairs)}
    layer_sets = {tuple(r[3]) for r in read.values()}
    if len(layer_sets) > 1:
        raise AdapterError("the adapters adapt different layers; merging needs the same ones")
    heads = {}
    for t, (_, head_state, pooling, _) in read.items():
        if head_state is None:
            raise AdapterError(f"the {t} adapter has no head (modules_to_save), so it cannot be scored")
        n_out = head_state["classifier.weight"].shape[0]
        if n_out != data.TASKS[t].num_labels:
            raise AdapterError(f"the {t} adapter's head has {n_out} outputs; {t} has "
                               f"{data.TASKS[t].num_labels}")
        head = lora.ClassificationHead(encoder.config.hidden_size, n_out, pooling, 0.0)
        head.load_state_dict(head_state)
        heads[t] = head
    tokenizer = tokenization.load_tokenizer(located.model)
    seed = cfg.seeds[0]
    prepared = osrm_min.prepare(cfg, located.data_dir, seed, tokenizer, {})
    measured = osrm_min.layer_statistics(encoder, cfg, prepared, "measure")
    # {layer: dW = B' A}, scale 1: read_adapter folded the adapter's scale into B'
    adapters = {t: osrm_min.Adapter(read[t][0], heads[t]) for t in tasks}
    vectors = {t: a.task_vector(1.0) for t, a in adapters.items()}
    unit = replace(cfg, alpha=float(cfg.rank))  # merged_scores scales by alpha / rank: 1

    def scores(rows):
        return {r["task"]: r["score"] for r in rows}

    rows = []
    for t in tasks:  # alone: the pretrained weights plus the task's own update
        with lora.merged_into_weights(encoder, vectors[t]):
            alone = osrm_min.Scoring(seed, "peft", "none", None, {t: adapters[t]})
            rows.append({"merge": "none", "lambda": None, "scores": scores(
                osrm_min.score(encoder, {t: adapters[t]}, alone, prepared, cfg))})
    for method in merges:
        for lam in ([None] if method in merge.NO_LAMBDA else [1 / len(tasks)] if method == "avg" else lams):
            merging = osrm_min.Scoring(seed, "peft", method, lam, adapters)
            got = scores(osrm_min.merged_scores(encoder, adapters, merging, {}, prepared, unit))
            rows.append({"merge": method, "lambda": lam, "scores": got})
    alone = {t: r["scores"][t] for r in rows if r["merge"] == "none" for t in r["scores"]}
    matrix = osrm_min.interference(vectors, measured)
    energy = {t: measures.subspace_energy({k.removesuffix(".A"): measures.row_space(v)
                                           for k, v in read[t][0].items() if k.endswith(".A")},
                                          measured, t) for t in tasks}
    result = {"adapters": {t: str(f) for t, (_, _, f) in zip(tasks, pairs)}, "model": located.model,
              "tasks": tasks, "alone": alone, "merged": [r for r in rows if r["merge"] != "none"],
              "interference": matrix, "energy": {t: {"own": e[0], "others": e[1]} for t, e in energy.items()},
              "measure_samples": cfg.measure_samples, "dev_samples": cfg.dev_samples}
    lines = summary(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    resume.write_json_atomic(result, out / "analysis.json")
    resume.write_text_atomic("\n".join(lines) + "\n", out / "summary.txt")
    return lines + [f"written to {out / 'analysis.json'} and summary.txt"]


def summary(result):
    """The tables: scores alone and merged (x100), interference, energy."""
    tasks = result["tasks"]
    lines = [f"PEFT adapters on {result['model']}; scores x100 on GLUE dev"
             + (f" ({result['dev_samples']} rows per task)" if result["dev_samples"] else ""),
             f"{'merge':<10}{'lambda':>7}" + "".join(f"{t:>9}" for t in tasks) + f"{'average':>9}"]
    rows = [("indiv", "-", result["alone"])] + [(r["merge"], "-" if r["lambda"] is None else f"{r['lambda']:g}",
                                                  r["scores"]) for r in result["merged"]]
    for name, lam, scores in rows:
        lines.append(f"{name:<10}{lam:>7}" + "".join(f"{scores[t]:>9.2f}" for t in tasks)
                     + f"{statistics.mean(scores.values()):>9.2f}")
    m = result["interference"]
    off = statistics.mean(m[i][j] for i in range(len(tasks)) for j in range(len(tasks)) if i != j)
    lines += ["", f"interference ||dW_t H_j|| / ||dW_j H_j|| on {result['measure_samples']} dev rows "
              f"per task (row: adapter, column: task's inputs); mean off-diagonal {off:.3f}",
              f"{'':<8}" + "".join(f"{t:>8}" for t in tasks)]
    lines += [f"{t:<8}" + "".join(f"{v:>8.3f}" for v in row) for t, row in zip(tasks, m)]
    lines += ["", "input energy each adapter's A reads, own task / other tasks:"]
    lines += [f"  {t}: {100 * e['own']:.3f}% / {100 * e['others']:.3f}%" for t, e in result["energy"].items()]
    return lines
