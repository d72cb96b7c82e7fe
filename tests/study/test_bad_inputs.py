"""Bad inputs and faults, one row each: what is done, the exit code, and the first line the user
sees. Every user-facing failure is one line starting with "error: " and a non-zero exit, never a
traceback; what can be recovered from (a damaged cache) is, with a note.

The runs use the tiny checkpoint and tiny GLUE files of test_cli.py and stop before training
where the input is refused, so the table runs in seconds.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
import torch

import merge
import osrm_min
import train
from conftest import ROOT, write_tiny_checkpoint
from conftest import tiny_args, write_tiny_glue
from study import config
from study import figures
from study import report
from study import resume
from tools.tiny import TINY_WORDS, hf_names, write_safetensors

DEEP_JSON = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot nest


def edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def setting(*flag_value):
    return lambda tmp, model, monkeypatch: list(flag_value)


def config_json(**changes):
    def setup(tmp, model, monkeypatch):
        edit_json(model / "config.json", **changes)
        return []
    return setup


def write(relative, content, under="model"):
    """Replace a file of the model folder (or of the GLUE folder) with `content` (bytes or text)."""
    def setup(tmp, model, monkeypatch=None):
        path = (model if under == "model" else tmp / "glue") / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return []
    return setup


def gpu_out_of_memory(tmp, model, monkeypatch):
    """Training that runs out of GPU memory, as torch reports it."""
    def finetune(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(train, "finetune", finetune)
    return []


def out_under_a_file(tmp, model, monkeypatch):
    (tmp / "file").write_text("")
    return ["--out", str(tmp / "file" / "out")]


def held_lock(tmp, model, monkeypatch):
    """Another run holds the output folder: the lock is taken here and kept until the test ends."""
    (tmp / "out").mkdir()
    held_lock.lock = resume.RunLock(tmp / "out").__enter__()
    return []


def disk_full(tmp, model, monkeypatch):
    def no_space(*a, **k):
        raise OSError(28, "No space left on device", str(tmp / "out" / "evaluations.json"))
    monkeypatch.setattr(resume, "write_atomic", no_space)
    return []


def full_disk(tmp, model, monkeypatch):
    """Every write fails as on a full disk: the temporary files are real, their bytes go to
    /dev/full (whose errors name no file)."""
    mkstemp = tempfile.mkstemp
    def on_a_full_disk(*args, **kwargs):
        fd, name = mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name
    monkeypatch.setattr(resume.tempfile, "mkstemp", on_a_full_disk)
    return []


def folder_at(name):
    """A folder where the run writes the file `name` (under --out)."""
    def setup(tmp, model, monkeypatch):
        (tmp / "out" / name).mkdir(parents=True)
        return []
    return setup


def nan_weights(tmp, model, monkeypatch):
    encoder = write_tiny_checkpoint(model)
    with torch.no_grad():
        encoder.layers[0].query.weight[0, 0] = float("nan")
    write_safetensors(hf_names(encoder.state_dict()), model / "model.safetensors")
    return []


def config_and_weights(**changes):
    """config.json changed, and random weights of the shapes it now implies."""
    def setup(tmp, model, monkeypatch):
        from lora import BertConfig, BertEncoder
        edit_json(model / "config.json", **changes)
        encoder = BertEncoder(BertConfig.from_dict(json.loads((model / "config.json").read_text())))
        write_safetensors(hf_names(encoder.state_dict()), model / "model.safetensors")
        return []
    return setup


def roberta(keep_vocab_txt=False, **changes):
    """The tiny RoBERTa checkpoint of test_roberta.py in the model folder, with its BPE files
    (and the BERT vocab.txt left beside them: a second vocabulary file)."""
    def setup(tmp, model, monkeypatch):
        fixtures = ROOT / "tests" / "pretrained" / "fixtures"
        for path in [*(fixtures / "roberta_tiny").iterdir(), *(fixtures / "bpe").iterdir()]:
            (model / path.name).write_bytes(path.read_bytes())
        if not keep_vocab_txt:
            (model / "vocab.txt").unlink()
        edit_json(model / "config.json", **changes)
        return []
    return setup


def cut_weights(tmp, model, monkeypatch):
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    return []


def weights_of_dtype(dtype):
    """model.safetensors with its first tensor's dtype in the header changed to `dtype`."""
    def setup(tmp, model, monkeypatch):
        path = model / "model.safetensors"
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = raw[8:8 + n].replace(b'"F32"', f'"{dtype}"'.encode(), 1)
        path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n:])
        return []
    return setup


def no_weights(tmp, model, monkeypatch):
    (model / "model.safetensors").unlink()
    return []


CASES = [
    # flags outside their domain that argparse's types accept
    ("--lam-ta negative", setting("--lam-ta", "-1"), "--lam-ta and --lam-ties must be positive"),
    ("--alpha 0", setting("--alpha", "0"), "--alpha must be positive"),
    ("--alpha nan", setting("--alpha", "nan"), "--alpha must be a finite number"),
    ("--lr inf", setting("--lr", "inf"), "--lr must be a finite number"),
    ("--lams nan", setting("--lams", "0.5,nan"), "--lams must be a finite number"),
    ("--dare-p nan", setting("--dare-p", "nan"), "--dare-p must be a finite number"),
    ("--warmup 2", setting("--warmup", "2"), "--warmup is a fraction"),
    ("--weight-decay -1", setting("--weight-decay", "-1"), "--weight-decay must be 0 or positive"),
    ("--eval-batch-size 0", setting("--eval-batch-size", "0"), "--eval-batch-size must be at least 1"),
    ("--seeds -1", setting("--seeds", "-1"), "--seeds must be non-negative"),
    ("--device cuda:x", setting("--device", "cuda:x"), "--device cuda:x: use cpu, cuda"),
    ("--model empty", setting("--model", ""), "--model is empty"),
    ("--out empty", setting("--out", " "), "--out is empty"),
    ("--inits twice", setting("--inits", "lora,osrm,lora"), "--inits lists lora twice"),
    ("--merges twice", setting("--merges", "ta,ta"), "--merges lists ta twice"),
    ("--lams twice", setting("--lams", "0.5,0.5"), "--lams lists 0.5 twice"),
    ("--rank 0", setting("--rank", "0"), "--rank must be at least 1"),
    ("--ties-keep 1.5", setting("--ties-keep", "1.5"), "--ties-keep is a fraction"),
    ("--targets foo", setting("--targets", "foo"), "valid: query"),
    ("--osrm-samples 0", setting("--osrm-samples", "0"), "--osrm-samples must be at least 1"),
    ("--inits foo", setting("--inits", "lora,foo"), "--inits: unknown value 'foo'"),
    ("--max-length beyond the positions", setting("--max-length", "1000"), "positions"),
    ("--device tpu", setting("--device", "tpu"), "--device tpu: use cpu, cuda"),
    ("osrm-post before lora", setting("--inits", "osrm-post"), "list lora before it"),
    ("--heldout-samples 0", setting("--heldout-samples", "0"), "--heldout-samples must be at least 1"),
    ("--own-eps 0", setting("--own-eps", "0"), "--own-eps must be positive"),
    ("--fisher-eps 0", setting("--fisher-eps", "0"), "--fisher-eps must be positive"),
    ("--own-eps too large to factorise", setting("--inits", "osrm-own", "--own-eps", "1e308"),
     "cannot be factorised with --own-eps 1e+308; use a smaller --own-eps"),
    ("held out more rows than a task has", setting("--select-on", "heldout", "--heldout-samples", "1000"),
     "leaves none to train on"),
    ("--seeds not numbers", setting("--seeds", "a,b"), "--seeds: 'a,b' is not"),
    ("--dare-p 1", setting("--dare-p", "1"), "--dare-p is a probability"),
    ("rows for a task not run", setting("--train-samples-per-task", "cola=3"), "'cola=3' is not task=rows"),
    ("rows without a count", setting("--train-samples-per-task", "mrpc"), "'mrpc' is not task=rows"),
    ("rows for a task twice", setting("--train-samples-per-task", "mrpc=1,MRPC=2"), "lists mrpc twice"),
    ("--dev-samples -1", setting("--dev-samples", "-1"), "--dev-samples must be 0"),
    ("two presets", setting("--lab", "--full"), "--full and --lab are two presets"),
    ("--full without a device", setting("--full"), ("--full is the paper's protocol for a GPU",
                                                    "--device cpu to run it on the CPU anyway")),
    ("out of GPU memory", gpu_out_of_memory, ("the GPU ran out of memory", "--batch-size")),
    ("--merges dare", setting("--merges", "dare"), "--merges: unknown value"),
    ("unknown task", setting("--tasks", "sst2,foo"), "unknown task 'foo'"),
    # model folders whose JSON parses but says something impossible
    ("config.json not an object", write("config.json", "[1, 2]"), "config.json is not a JSON object"),
    ("config.json not UTF-8", write("config.json", b"\xff\xfe{}"), "config.json is not valid JSON"),
    *[(f"{name} nested too deep", write(name, DEEP_JSON), f"{name} is not valid JSON")
      for name in ("config.json", "tokenizer_config.json", "1_Pooling/config.json")],
    ("hidden_size a string", config_json(hidden_size="abc"), "hidden_size 'abc' is not a positive integer"),
    ("vocab_size 2e9 (256 GB)", config_json(vocab_size=2_000_000_000),
     "tensor embeddings.word_embeddings.weight has shape"),
    ("heads that do not divide", config_json(num_attention_heads=5), "does not split into 5 heads"),
    ("dropout 1.5", config_json(hidden_dropout_prob=1.5), "hidden_dropout_prob 1.5 is not a probability"),
    ("pad id outside the vocabulary", config_json(pad_token_id=10_000), "pad_token_id 10000 is not"),
    ("hidden_act unknown", config_json(hidden_act="swish"), "hidden_act 'swish' is not supported"),
    ("model_type unknown", config_json(model_type="gpt2"), "model_type 'gpt2' is not supported"),
    ("a size of 2^63", config_json(hidden_size=2**63), "hidden_size 9223372036854775808 is not a positive integer"),
    ("a vocabulary of 2^63", config_json(vocab_size=2**63), "vocab_size 9223372036854775808 is not"),
    ("sizes whose product overflows", config_json(vocab_size=2**31 - 1, hidden_size=2**31 - 1),
     "parameters are beyond any encoder"),
    ("200,000 layers (minutes to build)", config_json(num_hidden_layers=200_000),
     "200000 layers and"),
    ("hidden_act a list", config_json(hidden_act=["gelu"]), "hidden_act ['gelu'] is not supported"),
    # tokenizers that do not fit the embeddings
    ("a vocabulary longer than vocab_size", write("vocab.txt", "\n".join(
        ["[unused0]", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]) + "\n"),
     "the tokenizer's ids go up to 36, beyond config.json's vocab_size 36"),
    ("pairs with type_vocab_size 1", config_and_weights(type_vocab_size=1),
     "token type 1, beyond config.json's type_vocab_size 1"),
    ("a second vocabulary file beside RoBERTa's", roberta(keep_vocab_txt=True),
     "token type 1, beyond config.json's type_vocab_size 1"),
    ("RoBERTa padding with another id", roberta(pad_token_id=3),
     "the tokenizer pads with id 1, config.json's pad_token_id is 3"),
    ("pooling config not an object", write("1_Pooling/config.json", "[true]"),
     "1_Pooling/config.json is not a JSON object"),
    ("tokenizer config of the wrong type", write("tokenizer_config.json", '{"do_lower_case": "yes"}'),
     "do_lower_case is 'yes', not a bool"),
    ("vocab.txt not UTF-8", write("vocab.txt", b"[PAD]\n\xff\n"), "vocab.txt is not UTF-8 text"),
    ("weights cut short", cut_weights, "cannot read"),
    ("weights holding NaN", nan_weights, "is not all finite"),
    ("no weights", no_weights, "neither model.safetensors nor pytorch_model.bin"),
    ("weights of a dtype not read", weights_of_dtype("F8_E4M3"), "has dtype F8_E4M3, which osrm-min does not read"),
    # data and output folders
    ("only malformed rows", write("SST-2/train.tsv", "sentence\tlabel\nno tab here\n", under="glue"),
     "no usable rows"),
    ("a GLUE file that is not UTF-8", write("SST-2/dev.tsv", b"sentence\tlabel\ncaf\xe9\t1\n", under="glue"),
     "is not UTF-8 text"),
    ("--out under a file", out_under_a_file, "--out"),
    ("--out held by another run", held_lock, "is in use by another osrm-min run (pid"),
    ("a full disk", disk_full, "No space left on device"),
    ("a full disk names the file it could not write", full_disk,
     ("No space left on device: ", "adapters/lora-sst2-seed42.pt; check")),
    *[(f"{name} a folder", folder_at(name), f"{name} is a folder, where this run writes a file")
      for name in ("results.json", "summary.txt", "evaluations.json", "lambda.png",
                   "adapters/lora-sst2-seed42.pt")],
    # training that cannot go on
    ("a learning rate that diverges", setting("--lr", "1e30"), ("the learning rate is too high", "--lr")),
    ("a RegMean whose Gram matrices sum to a singular one",
     setting("--inits", "lora", "--merges", "regmean", "--regmean-samples", "1"),
     ("regmean: the sum of the tasks' Gram matrices is singular", "--regmean-samples")),
    # evaluations whose outputs are not finite: an error, never a score
    *[(f"{merge} at lambda 1e30", setting("--inits", "lora", "--merges", merge, flag, "1e30"),
       (f"lora/sst2 merged by {merge} at lambda 1e+30 (try smaller lambdas)", "--lams"))
      for merge, flag in (("ta", "--lam-ta"), ("ties", "--lam-ties"), ("dare-ta", "--lams"))],
]


@pytest.mark.parametrize("name, setup, first_line", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_non_zero_exit(name, setup, first_line, tmp_path, tiny_model,
                                                     capsys, monkeypatch):
    write_tiny_glue(tmp_path / "glue")
    extra = setup(tmp_path, tiny_model, monkeypatch) or []
    try:
        code = osrm_min.main(tiny_args(tmp_path, tiny_model) + extra)
    finally:
        if getattr(held_lock, "lock", None):
            held_lock.lock.__exit__(None, None, None)
            held_lock.lock = None
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
           if line.startswith("error: ")]
    assert code == 2
    phrases = first_line if isinstance(first_line, tuple) else (first_line,)  # each in the line
    assert len(err) == 1 and all(p in err[0] for p in phrases), err


# Files the run did not make: never written through, never removed

LINKS = {  # what is linked in --out, and how
    ".lock, a symbolic link": (".lock", os.symlink), ".lock, a hard link": (".lock", os.link),
    "adapters, a symbolic link": ("adapters", os.symlink)}


@pytest.mark.parametrize("link", LINKS)
def test_a_link_in_the_output_folder_is_refused_and_what_it_points_to_untouched(
        tmp_path, tiny_model, capsys, link):
    write_tiny_glue(tmp_path / "glue")
    name, make = LINKS[link]
    theirs = tmp_path / "theirs"  # outside --out: a user's file, or folder
    if name == "adapters":
        theirs.mkdir()
    else:
        theirs.write_text("the user's notes")
    (tmp_path / "out").mkdir()
    make(theirs, tmp_path / "out" / name)
    assert osrm_min.main(tiny_args(tmp_path, tiny_model)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"out/{name} is a link" in err[0], err
    assert (list(theirs.iterdir()) == [] if name == "adapters"
            else theirs.read_text() == "the user's notes")


def test_a_figure_replaces_a_link_at_its_path_instead_of_writing_through_it(tmp_path):
    class Figure:  # all that save_figure asks of a matplotlib figure
        def savefig(self, f, format, dpi):
            f.write(b"\x89PNG")
    theirs = tmp_path / "theirs.png"
    theirs.write_bytes(b"the user's picture")
    os.symlink(theirs, tmp_path / "lambda.png")
    figures.save_figure(Figure(), tmp_path / "lambda.png")
    assert theirs.read_bytes() == b"the user's picture"
    assert (tmp_path / "lambda.png").read_bytes() == b"\x89PNG"


def test_only_the_temporary_files_a_dead_run_left_are_removed(tmp_path):
    out = tmp_path / "out"
    (out / "adapters").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    left = [out / f".evaluations.json.osrm-min-{dead}-ab12cd34.tmp",
            out / "adapters" / f".lora-sst2-seed42.pt.osrm-min-{dead}-x_9y8z7w.tmp"]
    kept = [out / ".notes.tmp", out / "adapters" / ".draft.tmp",  # the user's own
            out / ".results.json.ab12cd34.tmp",  # not osrm-min's name
            out / f".results.json.osrm-min-{os.getppid()}-ab12cd34.tmp"]  # a live process's
    for path in left + kept:
        path.write_text("")
    (out / ".folder.tmp").mkdir()
    with resume.RunLock(out):
        pass
    assert [p.exists() for p in left + kept] == [False] * len(left) + [True] * len(kept)
    assert (out / ".folder.tmp").is_dir()


def test_argparse_keeps_its_usage_error_for_a_malformed_command_line(capsys):
    with pytest.raises(SystemExit) as e:
        osrm_min.main(["--rank", "eight"])
    assert e.value.code == 2 and "invalid int value: 'eight'" in capsys.readouterr().err


# What is recovered from, not refused

def run_twice(tmp_path, tiny_model, capsys, change, extra=()):
    """Run, apply `change`, run again; (first results, second results, second output)."""
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora", "--merges", "ta", *extra)
    assert osrm_min.main(args) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())
    capsys.readouterr()
    change()
    assert osrm_min.main(args) == 0
    second = json.loads((tmp_path / "out" / "results.json").read_text())
    return first, second, capsys.readouterr().out


def scores(results):
    return {(r["init"], r["merge"], r["task"]): r["score"] for r in results["rows"]}


def test_a_changed_dev_file_is_evaluated_again_like_a_fresh_run(tmp_path, tiny_model, capsys):
    dev = tmp_path / "glue" / "SST-2" / "dev.tsv"
    positive_only = lambda: dev.write_text("\n".join(   # the header and the rows labelled 1
        line for line in dev.read_text().splitlines() if not line.endswith("\t0")) + "\n")
    first, second, out = run_twice(tmp_path, tiny_model, capsys, positive_only)
    assert "files changed since 2 scores" in out and "loaded the adapter trained earlier" in out
    fresh = tmp_path / "fresh"
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--inits", "lora", "--merges", "ta",
                              "--out", str(fresh))) == 0
    again = json.loads((fresh / "results.json").read_text())
    assert scores(second) == scores(again) != scores(first)


def test_new_weights_at_the_same_path_retrain_every_adapter(tmp_path, tiny_model, capsys):
    first, second, out = run_twice(tmp_path, tiny_model, capsys,
                                   lambda: write_tiny_checkpoint(tiny_model, seed=1))
    assert out.count("its input files changed (model)") == 2
    assert "loaded the adapter trained earlier" not in out


def test_a_checkpoint_of_another_width_at_the_same_path_retrains(tmp_path, tiny_model, capsys):
    def wider():
        write_tiny_checkpoint(tiny_model, seed=1)
        edit_json(tiny_model / "config.json", hidden_size=48, intermediate_size=96)
        from lora import BertConfig, BertEncoder
        encoder = BertEncoder(BertConfig.from_dict(json.loads((tiny_model / "config.json").read_text())))
        write_safetensors(hf_names(encoder.state_dict()), tiny_model / "model.safetensors")
    first, second, out = run_twice(tmp_path, tiny_model, capsys, wider)
    assert out.count("its input files changed (model)") == 2


@pytest.mark.parametrize("damage", ["garbage", "wrong shape", "not a dict"])
def test_a_damaged_adapter_file_is_trained_again(tmp_path, tiny_model, capsys, damage):
    def spoil():
        path = tmp_path / "out" / "adapters" / "lora-sst2-seed42.pt"
        if damage == "garbage":
            path.write_bytes(b"not a checkpoint")
        else:
            saved = torch.load(path, weights_only=True)
            if damage == "wrong shape":
                saved["lora"]["layers.0.query.A"] = torch.zeros(3, 3)
            else:
                saved["lora"] = 5
            torch.save(saved, path)
    first, second, out = run_twice(tmp_path, tiny_model, capsys, spoil)
    assert "note: cannot use" in out and "lora-sst2-seed42.pt" in out
    assert scores(first) == scores(second)  # retrained the same way


# A cache entry is reused whole, and only where a fresh run gives the same; else it is dropped

def saved_adapters(out):
    """{file name: {tensor name: tensor}} of the adapters saved in `out`, A, B and the head."""
    adapters = {}
    for path in sorted((out / "adapters").glob("*.pt")):
        saved = torch.load(path, weights_only=True)
        adapters[path.name] = {**saved["lora"], **{f"head.{k}": v for k, v in saved["head"].items()}}
    return adapters


def same_adapters(a, b):
    return a.keys() == b.keys() and all(
        a[f].keys() == b[f].keys() and all(torch.equal(a[f][k], b[f][k]) for k in a[f]) for f in a)


@pytest.fixture(scope="module")
def fresh_lora(tmp_path_factory):
    """(results, adapters) of run_twice's command in a new folder: what its reruns must give."""
    tmp = tmp_path_factory.mktemp("fresh")
    write_tiny_checkpoint(tmp / "tiny-bert")
    write_tiny_glue(tmp / "glue")
    assert osrm_min.main(tiny_args(tmp, tmp / "tiny-bert", "--inits", "lora", "--merges", "ta")) == 0
    return json.loads((tmp / "out" / "results.json").read_text()), saved_adapters(tmp / "out")


def fresh_run(tmp_path, tiny_model, *args):
    """The results and adapters of `args` (tiny_args' extras) in a new --out: what a rerun must give."""
    out = tmp_path / "fresh"
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, *args, "--out", str(out))) == 0
    return json.loads((out / "results.json").read_text()), saved_adapters(out)


def write_pairs(glue, folder, header, row):
    """A third task's train and dev files, one `row(i, a, b)` per pair of tiny sentences."""
    from tools.tiny import NEGATIVE, POSITIVE
    pairs = [(a, b) for a in POSITIVE + NEGATIVE for b in POSITIVE + NEGATIVE][::3]
    (glue / folder).mkdir()
    for split in ("train", "dev"):
        lines = [header] + [row(i, a, b) for i, (a, b) in enumerate(pairs)]
        (glue / folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def write_rte(glue):
    write_pairs(glue, "RTE", "index\tsentence1\tsentence2\tlabel",
                lambda i, a, b: f"{i}\t{a}\t{b}\t{'entailment' if i % 2 else 'not_entailment'}")


def write_stsb(glue):
    write_pairs(glue, "STS-B", "genre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                lambda i, a, b: f"g\tf\ty\t{i}\ts\ts\t{a}\t{b}\t{i * 37 % 51 / 10}")


@pytest.mark.parametrize("init", ["osrm-mean", "osrm-mean-random"])
def test_an_adapter_made_from_the_other_tasks_in_order_is_not_reused_in_another_order(
        tmp_path, tiny_model, init):
    """osrm-mean stacks the other tasks' means in --tasks order, and its null basis follows the
    order: the adapters of sst2,mrpc,rte are not those of sst2,rte,mrpc."""
    write_rte(write_tiny_glue(tmp_path / "glue"))
    args = ["--inits", init, "--merges", "ta"]
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, *args, "--tasks", "sst2,mrpc,rte")) == 0
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, *args, "--tasks", "sst2,rte,mrpc")) == 0
    results, adapters = fresh_run(tmp_path, tiny_model, *args, "--tasks", "sst2,rte,mrpc")
    assert same_adapters(saved_adapters(tmp_path / "out"), adapters)


def test_a_setting_that_changes_a_scores_rounding_is_evaluated_again(tmp_path, tiny_model):
    """STS-B's correlations move in the fifth digit with the evaluation's batches."""
    write_stsb(write_tiny_glue(tmp_path / "glue"))
    args = ["--tasks", "stsb,sst2", "--inits", "lora", "--merges", "ta"]
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, *args)) == 0
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, *args, "--eval-batch-size", "3")) == 0
    rerun = json.loads((tmp_path / "out" / "results.json").read_text())
    assert scores(rerun) == scores(fresh_run(tmp_path, tiny_model, *args, "--eval-batch-size", "3")[0])


def spoil_adapter(tmp_path, change):
    path = tmp_path / "out" / "adapters" / "lora-sst2-seed42.pt"
    saved = torch.load(path, weights_only=True)
    change(saved)
    torch.save(saved, path)


ADAPTER_DAMAGE = {
    "a head tensor of the wrong shape": lambda s: s["head"].update({"classifier.weight": torch.zeros(3, 3)}),
    "a head tensor missing": lambda s: s["head"].pop("classifier.bias"),
    "a head of NaN": lambda s: [v.fill_(float("nan")) for v in s["head"].values()],
    "an A in float64": lambda s: s["lora"].update({"layers.0.query.A": s["lora"]["layers.0.query.A"].double()}),
    "a training summary of text": lambda s: s["training"].update(loss_end="low"),
    "no training summary": lambda s: s.update(training=None),
}


@pytest.mark.parametrize("damage", ADAPTER_DAMAGE, ids=list(ADAPTER_DAMAGE))
def test_a_damaged_adapter_is_discarded_whole_and_trained_again_as_a_fresh_run_would(
        tmp_path, tiny_model, capsys, fresh_lora, damage):
    first, second, out = run_twice(tmp_path, tiny_model, capsys,
                                   lambda: spoil_adapter(tmp_path, ADAPTER_DAMAGE[damage]))
    assert "note: cannot use" in out and "lora-sst2-seed42.pt" in out
    fresh, adapters = fresh_lora
    assert same_adapters(saved_adapters(tmp_path / "out"), adapters)
    assert scores(second) == scores(fresh) and second["training"] == fresh["training"]


def test_a_score_is_not_reused_beside_another_adapter(tmp_path, tiny_model, monkeypatch):
    """A saved adapter that a run can use but is not the one a score came from (here: edited,
    its B doubled) is scored again, alone and in every merge that holds it."""
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora", "--merges", "ta")
    assert osrm_min.main(args) == 0
    spoil_adapter(tmp_path, lambda s: s["lora"].update(
        {k: 2 * v for k, v in s["lora"].items() if k.endswith(".B")}))
    calls = []
    evaluate = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: calls.append(a[2].name) or evaluate(*a, **k))
    assert osrm_min.main(args) == 0
    assert sorted(calls) == ["mrpc", "sst2", "sst2"]  # sst2 alone, and both tasks merged


SCORE_DAMAGE = {
    "a score of true": lambda row: row.update(score=True),
    "a score that is not its metrics'": lambda row: row.update(score=99.0),
    "metrics out of their range": lambda row: row.update(score=200.0, metrics={"accuracy": 2.0}),
    "no predictions": lambda row: row.pop("predictions"),
    "a prediction that is not a number": lambda row: row["predictions"].__setitem__(0, "1"),
}


@pytest.mark.parametrize("damage", SCORE_DAMAGE, ids=list(SCORE_DAMAGE))
def test_a_score_a_fresh_run_could_not_give_is_evaluated_again(tmp_path, tiny_model, capsys,
                                                               fresh_lora, damage):
    def spoil():
        path = tmp_path / "out" / "evaluations.json"
        saved = json.loads(path.read_text())
        SCORE_DAMAGE[damage](next(r for r in saved["rows"] if r["task"] == "sst2"))
        path.write_text(json.dumps(saved))
    first, second, out = run_twice(tmp_path, tiny_model, capsys, spoil)
    assert "note: cannot use" in out and "evaluating again" in out
    assert scores(second) == scores(fresh_lora[0])


@pytest.mark.parametrize("content", ["[]", '{"settings": {}, "rows": [1, 2]}', "{not json",
                                     pytest.param(DEEP_JSON, id="nested too deep")])
def test_a_damaged_score_file_is_evaluated_again(tmp_path, tiny_model, capsys, content):
    first, second, out = run_twice(
        tmp_path, tiny_model, capsys,
        lambda: (tmp_path / "out" / "evaluations.json").write_text(content))
    assert "note: cannot use" in out and "evaluating again" in out
    assert scores(first) == scores(second)


def test_results_are_strict_json(tmp_path):
    path = tmp_path / "r.json"
    resume.write_json_atomic({"a": float("nan"), "b": [1.0, float("inf")], "c": 2.5}, path)
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": 2.5}
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_diverging_update_is_caught_after_the_last_step(tiny_model):
    """One step at an infinite learning rate: the loss was finite, the update is not."""
    from pretrained import checkpoint
    import lora
    from train import TrainSettings, finetune
    from train import TrainingError
    encoder, _ = checkpoint.load_checkpoint(tiny_model)
    lora.add_lora(encoder, ("query", "value"), 2, 4)
    head = lora.ClassificationHead(32, 2, "cls", 0.0)
    ids = torch.tensor([[2, 7, 8, 3]])
    batch = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
             "attention_mask": ids != 0, "labels": torch.tensor([1])}
    with pytest.raises(TrainingError, match="the adapter became not finite at step 1 of 1"):
        finetune(encoder, head, lambda e: [batch], TrainSettings(1, lr=float("inf"), warmup=0.0))


# Signals and pipes, through a real process

def test_ctrl_c_while_starting_up_exits_quietly():
    process = subprocess.Popen([sys.executable, str(ROOT / "osrm_min.py"), "--help"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    time.sleep(0.5)  # torch is still loading
    process.send_signal(2)  # SIGINT
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 or b"usage" in out  # a fast machine may have finished
    assert b"Traceback" not in err


def test_ctrl_c_pressed_twice_ends_in_the_message_not_a_traceback(tmp_path, tiny_model):
    """The second press, 10 ms after the first, lands in the clean-up (atexit's, torch's)."""
    write_tiny_glue(tmp_path / "glue")
    process = subprocess.Popen([sys.executable, str(ROOT / "osrm_min.py"),
                                *tiny_args(tmp_path, tiny_model, "--epochs", "100000")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    err = b""
    while b"lora/sst2" not in err:  # its progress bar: it is training
        err += os.read(process.stderr.fileno(), 4096)
    process.send_signal(2)  # SIGINT
    time.sleep(0.01)
    process.send_signal(2)
    err += process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == 130 and b"interrupted: " in err
    assert b"Traceback" not in err and b"Exception ignored" not in err


def test_a_closed_output_pipe_ends_the_run_quietly(tmp_path, tiny_model):
    write_tiny_glue(tmp_path / "glue")
    process = subprocess.Popen([sys.executable, str(ROOT / "osrm_min.py"),
                                *tiny_args(tmp_path, tiny_model)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    process.stdout.readline()  # as `| head -1` does
    process.stdout.close()
    err = process.stderr.read()
    process.wait(timeout=120)
    assert b"Traceback" not in err and b"Exception ignored" not in err


def test_atomically_written_files_get_the_usual_mode_not_a_private_one(tmp_path):
    """mkstemp makes its file 0600; results must be as readable as any file the user writes."""
    resume.write_json_atomic({"a": 1}, tmp_path / "r.json")
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~resume.UMASK


# The other entry points: a mistake ends in one line too

def one_error_line(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


RESULTS = {"cut short": '{"config": {"tasks": ["sst2"', "a list": "[1, 2]", "nested too deep": DEEP_JSON,
           "without rows": '{"config": {"inits": ["lora"], "merges": [], "seeds": [42], "tasks": ["sst2"]}}'}


@pytest.mark.parametrize("content", RESULTS, ids=list(RESULTS))
def test_report_on_a_results_file_it_cannot_read_says_so_in_one_line(tmp_path, capsys, content):
    (tmp_path / "results.json").write_text(RESULTS[content])
    assert report.main([str(tmp_path / "results.json")]) == 2
    err = capsys.readouterr().err
    assert one_error_line(err) and "results.json does not hold the results" in err, err


def a_file(tmp_path):
    (tmp_path / "file").write_text("")
    return str(tmp_path / "file" / "out")  # a folder under a file


ENTRY_POINTS = {  # (the module, its arguments) for a mistake made before any work
    "controlled.py --out under a file": ("extensions.controlled", lambda tmp: ["--overlaps", "0", "--seeds", "42",
                                                                   "--out", a_file(tmp)]),
    "controlled.py --seeds too large": ("extensions.controlled", lambda tmp: ["--seeds", str(2**70)]),
    "bench.py --steps 0": ("speed.bench", lambda tmp: ["--steps", "0"]),
    "bench.py --repeats 0": ("speed.bench", lambda tmp: ["--repeats", "0"]),
    "bench.py --eval-batch-size 0": ("speed.bench", lambda tmp: ["--eval-batch-size", "0"]),
    "tiny.py under a file": ("tools.tiny", lambda tmp: [a_file(tmp)]),
    "gpu_check.py --out under a file": ("tools.gpu_check", lambda tmp: ["--dry-run", "--out", a_file(tmp)]),
}


@pytest.mark.parametrize("case", ENTRY_POINTS, ids=list(ENTRY_POINTS))
def test_every_entry_point_ends_a_mistake_in_one_line(tmp_path, capsys, case):
    import importlib
    module, args = ENTRY_POINTS[case]
    assert importlib.import_module(module).main(args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert one_error_line(err), err


@pytest.mark.parametrize("script, results", [("exercise2.py", None), ("exercise3.py", DEEP_JSON)])
def test_a_lab_script_without_its_run_ends_in_one_line(tmp_path, script, results):
    if results:
        (tmp_path / "runs" / "sst2-stsb").mkdir(parents=True)
        (tmp_path / "runs" / "sst2-stsb" / "results.json").write_text(results)
    done = subprocess.run([sys.executable, str(ROOT / "lab" / script)], capture_output=True, text=True,
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode != 0 and one_error_line(done.stderr), done.stderr
    assert "runs/sst2-stsb/results.json" in done.stderr


def test_a_lab_run_without_a_task_layer_or_adapter_names_what_it_has(tmp_path, tiny_model):
    sys.path.insert(0, str(ROOT / "lab"))
    from load_run import LabError, load
    write_tiny_glue(tmp_path / "glue")
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--inits", "lora", "--merges", "ta")) == 0
    run = load(tmp_path / "out")
    for ask, says in [(lambda: run.layer_inputs("stsb", "layers.0.query"), "has no 'stsb', only sst2, mrpc"),
                      (lambda: run.layer_inputs("sst2", "layers.2.value"), "adapts no layer 'layers.2.value'"),
                      (lambda: run.statistics()["sst2"]["layers.2.value"], "has no 'layers.2.value'"),
                      (lambda: run.task_vector("osrm", "sst2"), "osrm-sst2-seed42.pt is missing")]:
        with pytest.raises(LabError, match=says):
            ask()


# Data outside its task's range: a malformed row, skipped and counted

@pytest.mark.parametrize("score", ["7.5", "-3", "5.0001", "1e30", "1_0", "\u0663"],
                         ids=["7.5", "-3", "5.0001", "1e30", "1_0 (float: 10)", "Arabic-Indic 3"])
def test_an_stsb_score_outside_0_to_5_is_a_malformed_row(tmp_path, score):
    import data
    scores = [score, "0", "5", "3.800", "0.25e1"]  # one out of range, then the edges and forms kept
    rows = ["genre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
    rows += [f"g\tf\ty\t{i}\ts\ts\tthe movie\tthe film\t{s}" for i, s in enumerate(scores)]
    (tmp_path / "STS-B").mkdir()
    (tmp_path / "STS-B" / "dev.tsv").write_text("\n".join(rows) + "\n")
    examples, skipped = data.load_split(data.TASKS["stsb"], "dev", tmp_path)
    assert skipped == 1 and [e.label for e in examples] == [0.0, 5.0, 3.8, 2.5]


# Costs: a long text is read only as far as max_length keeps

def tiny_tokenizers(tiny_model):
    from pretrained import tokenization
    return {"wordpiece": tokenization.load_tokenizer(tiny_model),
            "bpe": tokenization.load_tokenizer(ROOT / "tests" / "pretrained" / "fixtures" / "bpe")}


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_a_10_mb_sentence_is_read_only_as_far_as_max_length_keeps(tiny_model, monkeypatch, kind):
    from pretrained import tokenization
    tokenizer = tiny_tokenizers(tiny_model)[kind]
    read = []  # the characters handed to the text-wide step: basic tokenization, GPT-2's split
    if kind == "wordpiece":
        basic = tokenizer._basic_tokenize
        monkeypatch.setattr(tokenizer, "_basic_tokenize", lambda text: read.append(len(text)) or basic(text))
    else:
        split = tokenization.gpt2_split
        monkeypatch.setattr(tokenization, "gpt2_split", lambda text: read.append(len(text)) or split(text))
    text = "the movie was good , and very fun ! " * 300_000  # 10.8 MB
    ids = [tokenizer.encode(text, max_length=32), tokenizer.encode(text, "a film", max_length=32)]
    assert sum(read) < 10_000
    assert ids == [tokenizer.encode(text[:5000], max_length=32),
                   tokenizer.encode(text[:5000], "a film", max_length=32)]


TRICKY = ["a \u0301b c\x0b d  e\t\tf\n\ng\r h \u00a0i\u2028j k=\u0338l \u4e2d\u6587 it 's don't 3.5 !? "
          "e\u0301\u0301 \U0001F600 end ", "  leading and trailing  ", " ", "", "word" * 300, "x " * 700]


@pytest.mark.parametrize("block", [1, 3])
def test_blocks_are_cut_where_the_tokens_do_not_change(tiny_model, monkeypatch, block):
    """Cut at every place the rule allows (blocks of 1 or 3 characters and up), the tokens are
    those of the whole text, on texts made of what could join across a cut: combining marks,
    controls, CJK, runs of whitespace, contractions."""
    import random
    from pretrained import tokenization
    rng = random.Random(0)
    alphabet = list("ab =\u0338\u0301 \t\n\x0b'se\u4e2d1!\u00a0\u2028")
    texts = TRICKY + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(500)]
    for tokenizer in tiny_tokenizers(tiny_model).values():
        whole = [tokenizer.tokenize(t) for t in texts]
        monkeypatch.setattr(tokenization, "BLOCK", block)
        tokenizer._cache = {}
        assert [tokenizer.tokenize(t) for t in texts] == whole
        monkeypatch.undo()


def test_full_sets_the_papers_lambda_grid_unless_lams_are_given():
    parse = lambda *a: config.parse_command_line(["--tasks", "sst2,mrpc", *a], osrm_min.INITS,
                                                 merge.METHODS)
    assert parse("--full", "--device", "cpu").lams == (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
    assert parse("--full", "--device", "cpu", "--lams", "0.4").lams == (0.4,)
    assert parse().lams == ()  # the CPU budget: each merge's own default lambda


def test_another_runtime_error_is_not_called_out_of_memory(tmp_path, tiny_model, monkeypatch):
    write_tiny_glue(tmp_path / "glue")
    monkeypatch.setattr(train, "finetune", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        osrm_min.main(tiny_args(tmp_path, tiny_model))
