"""bench.py runs end to end (on a tiny checkpoint and tiny data); it asserts no timings."""

import json

import bench
from test_cli import write_tiny_glue


def test_bench_reports_every_measurement(tmp_path, tiny_model, capsys):
    glue = write_tiny_glue(tmp_path / "glue")
    args = ["--model", str(tiny_model), "--data-dir", str(glue), "--warmup", "0", "--steps", "1",
            "--repeats", "1", "--epoch-rows", "16", "--no-compare", "--json"]
    assert bench.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["train"]) == {"dropout 0.1", "dropout 0"}
    for part in list(r["train"].values()) + [r["eval"]]:
        assert set(part) == {"ours", "ours_padded"}  # no transformers side with --no-compare
        assert all(side["examples_per_s"] > 0 for side in part.values())
    assert 0 < r["osrm"]["fraction"] < 1 and r["osrm"]["steps"] > 0
    assert set(r["merge_s"]) == {"ta", "ties"} and r["peak_rss_mib"] > 0
    assert r["epoch"]["grouped"]["padded_tokens"] <= r["epoch"]["random"]["padded_tokens"]
    assert r["transformers_peft"].startswith("skipped")
    assert "speed-up" in bench.report(r)
