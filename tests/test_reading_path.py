"""The experiment reads as the method: following one fine-tune from the command line to its
printed score passes through few files (tools/trace_files.py), and the spine's functions take
what the method needs, never the run's cache, recorder or worker pool."""

import inspect

import osrm_min
from conftest import tiny_args, write_tiny_glue
from tools import trace_files

SPINE = (osrm_min.run_seed, osrm_min.run_init, osrm_min.finetune_adapter, osrm_min.score,
         osrm_min.merged_scores, osrm_min.merge_statistics, osrm_min.layer_statistics)


def test_a_fine_tune_is_followed_through_five_files_from_the_command_line(tmp_path, tiny_model):
    write_tiny_glue(tmp_path / "glue")
    stacks = trace_files.trace(tiny_args(tmp_path, tiny_model, "--inits", "lora", "--merges", "ta"))
    files = {f for what in ("fine-tune", "score", "metric", "printed") for f, _ in stacks[what]}
    assert files == {"osrm_min.py", "study/cli.py", "study/resume.py", "train.py", "data.py"}
    assert stacks["fine-tune"][-2:] == [("osrm_min.py", "finetune_adapter"), ("train.py", "finetune")]
    assert stacks["printed"][-1] == ("osrm_min.py", "run_init")


def test_the_spine_takes_no_cache_recorder_or_pool():
    for function in SPINE:
        names = set(inspect.signature(function).parameters)
        assert not names & {"store", "results", "workers", "pool", "progress", "score"}, function


def test_the_cache_wraps_the_spine_from_outside_and_is_taken_off_after(tmp_path, tiny_model):
    plain = osrm_min.finetune_adapter, osrm_min.score
    write_tiny_glue(tmp_path / "glue")
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--inits", "lora", "--merges", "ta")) == 0
    assert (osrm_min.finetune_adapter, osrm_min.score) == plain


ROOT_MODULES = ("osrm_min.py", "lora.py", "merge.py", "data.py", "train.py", "fisher.py")


def parameters(function):
    """How many parameters a def takes, `self` and `cls` not counted."""
    a = function.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    return len(names) - (names[:1] in (["self"], ["cls"])) + bool(a.vararg) + bool(a.kwarg)


def test_no_function_in_the_root_modules_takes_more_than_six_parameters():
    import ast
    from conftest import ROOT
    many = [(name, f.name, parameters(f)) for name in ROOT_MODULES
            for f in ast.walk(ast.parse((ROOT / name).read_text()))
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and parameters(f) > 6]
    assert not many


def test_the_reading_path_stays_at_most_1823_lines():
    """The method as a learner reads it (issue 37's measure): the six root modules, at or below
    the 1,823 lines they had when the spine was redesigned."""
    from conftest import ROOT
    assert sum(len((ROOT / name).read_text().splitlines()) for name in ROOT_MODULES) <= 1823
