"""How many of the project's files a reader passes through following one fine-tune from the
command line to its printed score: the call stacks of a tiny run, read where the first
fine-tune starts (train.finetune), where its score is computed (train.evaluate, then the GLUE
metric, data.glue_metrics, under train.evaluate) and where that score is printed ("individual
score"). The files on those stacks are the ones a reader must open to follow the chain of
calls; what the called functions do below them (the encoder, the tokenizer) is not counted.

    python -m tools.trace_files          # prints each stack and the number of files

It runs `osrm_min.main` on the tiny checkpoint and data of tools/tiny.py in a temporary folder.
"""

import builtins
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def in_project(path):
    """Whether `path` (resolved) is one of the project's own files, not the script's own or an
    installed package's in a virtualenv inside the checkout."""
    return (path.is_file() and path.is_relative_to(ROOT) and path != Path(__file__).resolve()
            and not any(part.startswith(".") or part == "site-packages" for part in
                        path.relative_to(ROOT).parts))


def project_stack(frame):
    """[(file relative to the project, function)] of the frame and its callers, from
    osrm_min.main (the command line) on, without this script's own frames."""
    stack = []
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if in_project(path):
            stack.append((str(path.relative_to(ROOT)), frame.f_code.co_name))
        frame = frame.f_back
    stack = stack[::-1]
    start = next((i for i, f in enumerate(stack) if f == ("osrm_min.py", "main")), 0)
    return stack[start:]  # from the command line's entry point on


def trace(argv):
    """{what: stack} at the first fine-tune, its scoring, its metric and its printed score, for
    the run `osrm_min.main(argv)`; and under "ran", every project file whose code ran."""
    import data
    import osrm_min
    import train
    targets = {train.finetune.__code__: "fine-tune", train.evaluate.__code__: "score",
               data.glue_metrics.__code__: "metric"}
    stacks, ran = {}, set()

    def profile(frame, event, arg):
        if event == "call":
            ran.add(frame.f_code.co_filename)
        what = targets.get(frame.f_code) if event == "call" else None
        if what == "metric" and not scoring(frame):  # (a constant prediction's baseline)
            return
        if what is not None and what not in stacks:
            stacks[what] = project_stack(frame)

    def scoring(frame):
        while frame is not None and frame.f_code is not train.evaluate.__code__:
            frame = frame.f_back
        return frame is not None

    plain_print = builtins.print

    def print_(*args, **kwargs):
        if "printed" not in stacks and "individual score" in " ".join(map(str, args)):
            stacks["printed"] = project_stack(sys._getframe(1))
        plain_print(*args, **kwargs)

    builtins.print, previous = print_, sys.getprofile()
    sys.setprofile(profile)
    try:
        code = osrm_min.main(argv)
    finally:
        sys.setprofile(previous)
        builtins.print = plain_print
    if code != 0:
        raise SystemExit(f"the tiny run failed (exit {code})")
    ran = {Path(f).resolve() for f in ran}
    stacks["ran"] = sorted(str(p.relative_to(ROOT)) for p in ran if in_project(p))
    return stacks


def main():
    from tools import tiny
    with tempfile.TemporaryDirectory() as tmp:
        stacks = trace(tiny.run_args(tmp, "--epochs", "1", "--inits", "lora", "--merges", "ta"))
    files = []
    print()
    for what in ("fine-tune", "score", "metric", "printed"):
        stack = stacks.get(what, [])
        print(f"{what}: " + " -> ".join(f"{f}:{fn}" for f, fn in stack))
        files += [f for f in dict.fromkeys(f for f, _ in stack) if f not in files]
    print(f"\n{len(files)} project files from the command line to a fine-tune's printed score: "
          f"{', '.join(files)}")
    print(f"(for scale: code of {len(stacks['ran'])} project files runs in the whole tiny run)")


if __name__ == "__main__":
    main()
