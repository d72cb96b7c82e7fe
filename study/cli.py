"""The command line of `python osrm_min.py`: settings (config.py), one run per output folder,
the model and tokenizer, fingerprints of the input files, the experiment (osrm_min.run, handed
in by osrm_min.main, so that nothing here imports the entry point), the report, and a one-line
error with a non-zero exit for anything a user can fix.

    python osrm_min.py --tasks sst2,mrpc      # osrm_min.main -> main(argv, inits, run)
"""

import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

import data
import lora
import merge
import train
from extensions import carving
from pretrained import checkpoint
from pretrained import hub
from pretrained import tokenization
from study import config
from study import endpoints
from study import figures
from study import report
from study import resume
from study.config import ExperimentError


def main(argv, inits, run):
    """The command, with Ctrl-C handled by `interrupted`; its exit code. inits: {name: help}
    of the valid --inits; run(cfg, located, encoder, tokenizer, inputs) -> results: the
    experiment."""
    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        return run_command(argv, inits, run)
    finally:
        if signal.getsignal(signal.SIGINT) is interrupted:  # not interrupted: as it was
            signal.signal(signal.SIGINT, previous)


def interrupted(signum, frame):
    """Ctrl-C stops the run (KeyboardInterrupt, handled in run_command), and any Ctrl-C after it
    is ignored: a second press a few milliseconds later would otherwise cut the clean-up short
    with a traceback. The process is on its way out; the handler is not put back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def run_command(argv, inits, run):
    t0 = time.time()
    try:
        cfg = config.parse_command_line(argv, inits, merge.METHODS)  # never changed after this
        located = config.locate_inputs(cfg)  # the model and GLUE: found here, or downloaded once
        resume.check_writable(cfg.out, ["results.json", "summary.txt", *figures.FIGURES,
                                        *resume.stored_files(cfg)])
        with resume.RunLock(cfg.out):
            inputs = fingerprint(cfg, located)  # before anything is read; checked again as it is read
            encoder, declared = checkpoint.load_checkpoint(located.model)
            config.check_against_model(cfg, min(m.in_features for m in lora.target_layers(
                encoder, cfg.targets).values()), encoder.config.max_length)
            tokenizer = tokenization.load_tokenizer(located.model)
            checkpoint.check_tokenizer(located.model, encoder.config, tokenizer, any(
                len(data.TASKS[t].text_columns) > 1 for t in cfg.tasks))
            unchanged_while_loading(located.model, inputs)
            pooling = cfg.heads_pooling(declared)  # what every task's head pools by
            print(config.banner(cfg, located, pooling), flush=True)
            results = run(cfg, located, encoder, tokenizer, inputs)
            results["located"] = dict(asdict(located), pooling=pooling)
            results["wall_time_s"] = round(time.time() - t0, 1)
            endpoints.finish(results)
            resume.write_json_atomic(results, Path(cfg.out) / "results.json")
            text = report.summary(results)
            resume.write_text_atomic(text + "\n", Path(cfg.out) / "summary.txt")
            drawn = figures.write_figures(results, cfg.out)
        print()
        print(text)
        print(drawn)
        print(f"results in {Path(cfg.out) / 'results.json'} and summary.txt")
        return 0
    except (data.DataError, checkpoint.CheckpointError, hub.DownloadError, ExperimentError) as e:
        print(f"error: {e}", file=sys.stderr)
    except merge.SingularError as e:
        print(f"error: {e}; use more --regmean-samples or a --regmean-alpha below 1", file=sys.stderr)
    except train.TrainingError as e:  # the method says what to change, the flags are here
        print(f"error: {with_flags(str(e))}", file=sys.stderr)
    except BrokenPipeError:  # the reader of our output has gone (`| head`): leave quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # permissions, a full disk, a file where a folder should be, ...
        print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}; check the path, "
              f"its permissions and the free space", file=sys.stderr)
    except MemoryError:
        print("error: out of memory; try a smaller --batch-size or --eval-batch-size",
              file=sys.stderr)
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError, or one a worker process reports
        if not out_of_device_memory(e):
            raise
        print("error: the GPU ran out of memory; try a smaller --batch-size (training) or "
              "--eval-batch-size (scoring), or fewer --workers on one GPU", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: trained adapters and computed scores are saved; rerun the same "
              "command to resume", file=sys.stderr)
        return 130
    return 2


# What a train.TrainingError may tell a user to change, in the method's words, and its flags
TRAINING_FLAGS = {"learning rate": "--lr", "smaller lambdas": "--lams, --lam-ta, --lam-ties"}


def with_flags(message):
    """A TrainingError's message, followed by the flags of what it tells the user to change
    (none where its cause is not a setting, e.g. extreme labels)."""
    flags = [flag for words, flag in TRAINING_FLAGS.items() if words in message]
    return f"{message} ({'; '.join(flags)})" if flags else message


def out_of_device_memory(error):
    """Whether `error` is a GPU's out-of-memory error (torch.cuda.OutOfMemoryError, also when a
    worker process reports it as text)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(error)


def fingerprint(cfg, located):
    """The content digests of every input file (resume.py), and what they cost."""
    t0 = time.time()
    data_files, carved = {}, {}
    for t in cfg.tasks:
        paths, carved[t] = carving.split_sources(data.TASKS[t], located.data_dir, cfg.carve_splits)
        data_files.update({f"{split}:{t}": path for split, path in paths.items()})
    inputs = resume.fingerprint_inputs(located.model, data_files, carved)
    print(f"fingerprints of the model, tokenizer and data files: {time.time() - t0:.2f}s")
    return inputs


def unchanged_while_loading(model, inputs):
    """That the model and tokenizer files read after `fingerprint` are still the ones it
    digested, so that what was loaded is what the saved results are keyed on (the GLUE files
    are checked as each is read, data.load_split)."""
    now = resume.fingerprint_inputs(model)
    changed = [k for k in ("model", "tokenizer") if now[k] != inputs[k]]
    if changed:
        raise ExperimentError(f"the {' and '.join(changed)} files in {model} changed while "
                              f"this run read them; rerun once they are complete")
