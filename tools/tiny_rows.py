"""What a tiny run with every init and every merge records, but for the times it took: a
check that a change to the code left every number as it was (scores, held-out scores,
interference, subspace energy, spectrum, training losses, movement of A).

    python -m tools.tiny_rows /tmp/before.json                        # write them
    python -m tools.tiny_rows /tmp/after.json --compare /tmp/before.json  # and compare

It runs `osrm_min.main` on the tiny checkpoint and data of tools/tiny.py in a temporary folder,
with one thread (so that the sums of a reduction run in one order).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

RECORDED = ("rows", "heldout_rows", "interference", "interference_fit", "subspace_energy",
            "spectrum", "training", "movement", "baselines", "labels")


def tiny_results():
    """{list: entries} of results.json of a tiny run with every init and merge."""
    import torch

    import merge
    import osrm_min
    from tools import tiny
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        argv = tiny.run_args(tmp, "--epochs", "2", "--lr", "1e-3", "--inits", ",".join(osrm_min.INITS),
                             "--merges", ",".join(merge.METHODS), "--lams", "0.5,1.0",
                             "--select-on", "heldout", "--heldout-samples", "4", "--own-at-lambda",
                             "--regmean-samples", "8", "--regmean-alpha", "0.9",
                             "--fisher-samples", "8", "--seeds", "1,2")
        code = osrm_min.main(argv)
        if code != 0:
            raise SystemExit(f"the tiny run failed (exit {code})")
        results = json.loads((tmp / "out" / "results.json").read_text())
    return {k: results[k] for k in RECORDED}


def unordered(entries):
    """A list's entries as a sorted list of their JSON (the order the inits and merges run in is
    not a result); anything else as it is."""
    if not isinstance(entries, list):
        return entries
    return sorted(json.dumps(e, sort_keys=True) for e in entries)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="where to write what the run recorded (JSON)")
    p.add_argument("--compare", help="a file this script wrote before; exit 1 if they differ")
    args = p.parse_args(argv)
    recorded = tiny_results()
    Path(args.out).write_text(json.dumps(recorded, indent=1))
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    differ = [k for k in RECORDED if unordered(before.get(k)) != unordered(recorded[k])]
    print(f"\n{'identical' if not differ else 'DIFFERENT: ' + ', '.join(differ)}: "
          f"{sum(len(v) for v in recorded.values())} entries in {', '.join(RECORDED)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
