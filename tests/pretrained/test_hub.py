"""Downloads of hub models and GLUE, from a real HTTP server on 127.0.0.1 serving files written here."""

import http.server
import io
import json
import os
import shutil
import socket
import threading
import zipfile
from types import SimpleNamespace

import pytest

import data
import osrm_min
from conftest import REAL_GLUE
from pretrained.hub import (DownloadError, download_glue, download_model, hub_cache_dir, hub_snapshot,
                            model_cache_dir, resolve_model)


@pytest.fixture
def server(tmp_path):
    """An HTTP server serving the folder `root`; `requests` lists (path, Authorization header)."""
    root, requests = tmp_path / "www", []
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append((self.path, self.headers.get("Authorization")))
            super().do_GET()

        def log_message(self, *args):  # keep the test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # a short poll interval, so that shutdown() at the end of a test returns at once
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_port}", requests=requests)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_url():
    """The address of a port that was bound and closed again: nothing answers there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# Models from the hub

def safetensors_bytes(tensors):
    """The bytes of a .safetensors file holding `tensors`."""
    import tempfile
    import torch
    from tools.tiny import write_safetensors
    with tempfile.TemporaryDirectory() as d:
        write_safetensors({k: torch.tensor(v) for k, v in tensors.items()}, f"{d}/w.safetensors")
        return open(f"{d}/w.safetensors", "rb").read()


WEIGHTS = safetensors_bytes({"w": [[float(i) for i in range(64)]] * 40})  # a 10 KiB weights file
BERT_REPO = {"config.json": b'{"model_type": "bert"}', "model.safetensors": WEIGHTS,
             "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n",
             "tokenizer_config.json": b'{"do_lower_case": true}',
             "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'}


@pytest.fixture
def hub(server, tmp_path, monkeypatch):
    """The server as HF_ENDPOINT, with an empty HF_HOME; `hub.put(repo_id, files)` publishes a model."""
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))

    def put(repo_id, files, revision="main"):
        for name, content in files.items():
            path = server.root / repo_id / "resolve" / revision / name  # the hub's resolve URLs
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)

    server.put = put
    return server


def test_download_model_puts_the_files_in_a_plain_folder(hub, tmp_path):
    hub.put("sentence-transformers/all-MiniLM-L6-v2", BERT_REPO)
    folder = download_model("sentence-transformers/all-MiniLM-L6-v2")
    assert folder == tmp_path / "hf-home/osrm-min/models/sentence-transformers--all-MiniLM-L6-v2/main"
    for name, content in BERT_REPO.items():
        assert (folder / name).read_bytes() == content
    # special_tokens_map.json is optional: its 404 is no error; and no temporary file is left behind
    assert not (folder / "special_tokens_map.json").exists()
    assert not list(folder.rglob("*.tmp"))


@pytest.mark.parametrize("on_hub, fetched, weights_asked_for", [
    (["model.safetensors", "pytorch_model.bin"], "model.safetensors", ["model.safetensors"]),
    (["pytorch_model.bin"], "pytorch_model.bin", ["model.safetensors", "pytorch_model.bin"]),
])
def test_safetensors_preferred_pytorch_model_bin_the_fallback(hub, on_hub, fetched, weights_asked_for):
    hub.put("bert-base-uncased", {"config.json": b"{}", "vocab.txt": b"[PAD]\n",
                                  **{name: WEIGHTS for name in on_hub}})
    folder = download_model("bert-base-uncased")
    assert (folder / fetched).read_bytes() == WEIGHTS
    assert [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")] == [fetched]
    asked_for = [path.rsplit("/", 1)[1] for path, _ in hub.requests
                 if path.endswith((".safetensors", ".bin"))]
    assert asked_for == weights_asked_for  # pytorch_model.bin only after safetensors' 404


def test_roberta_gets_vocab_json_and_merges_txt(hub):
    files = {"config.json": b'{"model_type": "roberta"}', "model.safetensors": WEIGHTS,
             "vocab.json": b'{"<s>": 0}', "merges.txt": b"#version: 0.2\n"}
    hub.put("FacebookAI/roberta-large", files)
    folder = download_model("FacebookAI/roberta-large")
    assert {p.name for p in folder.iterdir()} == set(files) | {".complete"}


def test_a_repository_without_weights_is_an_error(hub):
    hub.put("someone/no-weights", {"config.json": b"{}", "vocab.txt": b"[PAD]\n"})
    with pytest.raises(DownloadError, match="has no model.safetensors or pytorch_model.bin"):
        download_model("someone/no-weights")


def test_the_second_call_makes_no_request(hub):
    hub.put("bert-base-uncased", BERT_REPO)
    first = download_model("bert-base-uncased")
    n_requests = len(hub.requests)
    assert download_model("bert-base-uncased") == first
    assert len(hub.requests) == n_requests


def test_hf_token_is_sent_as_a_bearer_token(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.put("me/private-bert", BERT_REPO)
    download_model("me/private-bert")
    assert hub.requests and all(auth == "Bearer hf_secret" for _, auth in hub.requests)


def test_hf_hub_offline_uses_the_cache_only(hub, monkeypatch, closed_url):
    hub.put("bert-base-uncased", BERT_REPO)
    cached = download_model("bert-base-uncased")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", closed_url)
    assert download_model("bert-base-uncased") == cached
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set and roberta-large"):
        download_model("roberta-large")


def test_offline_is_a_one_line_error_that_names_model(hub, monkeypatch, closed_url):
    monkeypatch.setenv("HF_ENDPOINT", closed_url)
    with pytest.raises(DownloadError) as e:
        download_model("bert-base-uncased")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"cannot download {closed_url}/bert-base-uncased/resolve/main/config.json: ")
    assert message.endswith("pass --model PATH to a local folder, or set HF_ENDPOINT")
    assert not model_cache_dir("bert-base-uncased").joinpath(".complete").exists()


def test_a_missing_model_names_the_http_error(hub):
    with pytest.raises(DownloadError, match=r"config.json: HTTP 404 .*; pass --model PATH"):
        download_model("nobody/no-such-model")


def test_resolve_model(hub, tmp_path):
    local = tmp_path / "my-bert"
    local.mkdir()
    assert resolve_model(str(local)) == local  # a local folder is used as it is
    hub.put("sentence-transformers/all-MiniLM-L6-v2", BERT_REPO)
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == \
        model_cache_dir("sentence-transformers/all-MiniLM-L6-v2")
    for bad in ("./no/such/folder", "a/b/c", "bad--id"):
        with pytest.raises(DownloadError, match=f"--model {bad} is neither a local folder nor a "
                                                f"Hugging Face hub id"):
            resolve_model(bad)


# GLUE from its distribution

def zip_of(files):
    """The bytes of a zip holding `files` ({name in the zip: text})."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buffer.getvalue()


COLA = "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n"  # no header
SST2 = "sentence\tlabel\nit 's a charming journey . \t1\nunflinchingly bleak \t0\n"
QNLI = "index\tquestion\tsentence\tlabel\n0\tWhat?\tThis.\tentailment\n"
MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"  # SentEval's files start with a BOM
MRPC_TRAIN = MRPC_HEADER + "1\t702876\t702977\tAmrozi accused his brother .\tHe called his brother .\n" \
                           "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's .\n" \
                           "1\t1330381\t1330521\tThey had published .\tThey published .\n"
MRPC_TEST = MRPC_HEADER + "1\t1089874\t1089925\tPCCW 's chief .\tCurrent Chief .\n"
MRPC_DEV_IDS = "2108705\t2108831\n"


@pytest.fixture
def glue(server, monkeypatch):
    """The server as a GLUE mirror: the task zips, and MRPC's SentEval files and dev ids."""
    for name in ("GLUE_BASE_URL", "MRPC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    (server.root / "CoLA.zip").write_bytes(zip_of({"CoLA/train.tsv": COLA, "CoLA/dev.tsv": COLA}))
    (server.root / "SST-2.zip").write_bytes(zip_of({"SST-2/train.tsv": SST2, "SST-2/dev.tsv": SST2,
                                                    "SST-2/test.tsv": "index\tsentence\n"}))
    (server.root / "QNLIv2.zip").write_bytes(zip_of({"QNLI/train.tsv": QNLI, "QNLI/dev.tsv": QNLI}))
    (server.root / "msr_paraphrase_train.txt").write_text(MRPC_TRAIN, encoding="utf-8")
    (server.root / "msr_paraphrase_test.txt").write_text(MRPC_TEST, encoding="utf-8")
    (server.root / "mrpc_dev_ids.tsv").write_text(MRPC_DEV_IDS)
    return server


def test_download_glue_lays_out_the_tasks_as_download_glue_data_py(glue, tmp_path):
    dest = download_glue(["cola", "SST-2", "qnli", "mrpc"], tmp_path / "glue", base_url=glue.url)
    assert sorted(p.name for p in dest.iterdir()) == ["CoLA", "MRPC", "QNLI", "SST-2"]  # no temp left
    assert (dest / "CoLA" / "dev.tsv").read_text() == COLA
    assert (dest / "SST-2" / "train.tsv").read_text() == SST2
    assert (dest / "QNLI" / "dev.tsv").read_text() == QNLI  # from QNLIv2.zip
    # MRPC: the pair on the dev list is dev.tsv, the rest train.tsv, both under SentEval's header
    lines = MRPC_TRAIN.splitlines(keepends=True)
    assert (dest / "MRPC" / "dev.tsv").read_text(encoding="utf-8") == MRPC_HEADER + lines[2]
    assert (dest / "MRPC" / "train.tsv").read_text(encoding="utf-8") == \
        MRPC_HEADER + lines[1] + lines[3]
    assert (dest / "MRPC" / "test.tsv").read_text().splitlines() == [
        "index\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1089874\t1089925\tPCCW 's chief .\tCurrent Chief ."]
    # and data.py reads the result
    examples, n_skipped = data.load_split(data.TASKS["mrpc"], "dev", dest)
    assert (len(examples), n_skipped, examples[0].label) == (1, 0, 0)
    examples, n_skipped = data.load_split(data.TASKS["cola"], "train", dest)
    assert [e.label for e in examples] == [1, 0]


def test_glue_base_url_from_the_environment_and_no_second_download(glue, tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_BASE_URL", glue.url)
    download_glue(["sst2"], tmp_path / "glue")
    n_requests = len(glue.requests)
    download_glue(["sst2"], tmp_path / "glue")  # present: train.tsv and dev.tsv exist
    assert n_requests == 1 and len(glue.requests) == 1


def test_default_dest_is_the_xdg_cache(glue, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert download_glue(["cola"], base_url=glue.url) == tmp_path / "cache" / "osrm-min" / "glue"
    assert (tmp_path / "cache" / "osrm-min" / "glue" / "CoLA" / "train.tsv").is_file()


def test_a_zip_with_a_path_outside_its_folder_is_refused(glue, tmp_path):
    (glue.root / "RTE.zip").write_bytes(zip_of({"RTE/train.tsv": "x", "../../evil.txt": "x"}))
    with pytest.raises(DownloadError, match="RTE.zip holds '../../evil.txt', outside its folder"):
        download_glue(["rte"], tmp_path / "glue", base_url=glue.url)
    assert not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "glue").iterdir()) == []  # the temporary folder is gone too


def test_glue_offline_is_a_one_line_error_that_names_data_dir(tmp_path, closed_url):
    with pytest.raises(DownloadError) as e:
        download_glue(["sst2"], tmp_path / "glue", base_url=closed_url)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"cannot download {closed_url}/SST-2.zip: ")
    assert message.endswith("pass --data-dir DIR or set GLUE_DIR to a local GLUE folder, "
                            "or GLUE_BASE_URL to a mirror")
    assert list((tmp_path / "glue").iterdir()) == []


MRPC_SOURCES = ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "dev_ids.tsv")


@pytest.mark.skipif(not all((REAL_GLUE / "MRPC" / f).is_file()
                            for f in MRPC_SOURCES + ("train.tsv", "dev.tsv")),
                    reason="the real MRPC files are not in $GLUE_DIR")
def test_mrpc_matches_the_real_glue_files_byte_for_byte(server, tmp_path):
    """download_glue_data.py's own MRPC, built from the same three source files, is the reference."""
    for name in MRPC_SOURCES:  # the script saves mrpc_dev_ids.tsv as dev_ids.tsv
        served = "mrpc_dev_ids.tsv" if name == "dev_ids.tsv" else name
        shutil.copy(REAL_GLUE / "MRPC" / name, server.root / served)
    dest = download_glue(["mrpc"], tmp_path / "glue", base_url=server.url)
    for name in ("train.tsv", "dev.tsv"):
        assert (dest / "MRPC" / name).read_bytes() == (REAL_GLUE / "MRPC" / name).read_bytes()


def test_the_experiment_runs_from_a_hub_id_and_downloaded_glue(hub, glue, tiny_model, tmp_path,
                                                               monkeypatch):
    """No local model and no GLUE folder: `--model tiny/bert` comes from the (local) hub and
    CoLA and SST-2 from the (local) GLUE mirror, into the caches, and the whole run goes on."""
    hub.put("tiny/bert", {p.relative_to(tiny_model).as_posix(): p.read_bytes()
                          for p in tiny_model.rglob("*") if p.is_file()})
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setenv("GLUE_BASE_URL", glue.url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["--tasks", "cola,sst2", "--model", "tiny/bert", "--out", str(tmp_path / "out"),
            "--train-samples", "16", "--epochs", "1", "--osrm-samples", "2", "--rank", "2",
            "--max-length", "32"]
    assert osrm_min.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (results["config"]["model"], results["config"]["data_dir"]) == ("tiny/bert", "")  # as given
    found = results["located"]  # what they resolved to
    assert found["model"] == str(model_cache_dir("tiny/bert"))
    assert found["data_dir"] == str(tmp_path / "cache" / "osrm-min" / "glue")


# Downloads that arrive broken are never cached

@pytest.fixture
def faulty(tmp_path, monkeypatch):
    """A hub whose answers are set per path: routes[path] = (status, headers, body, bytes_sent);
    bytes_sent cuts the body short (the connection then closes, as after a network failure).
    `requests` lists the paths asked for."""
    routes, requests = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            status, headers, body, sent = routes.get(self.path, (404, {}, b"", None))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[:sent])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}"
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))

    def publish(repo, files, commit=None, revision="main", **overrides):
        """Serve `files` whole, with Content-Length, except those given in overrides. With a
        `commit`, as the hub does: each answer names the commit (X-Repo-Commit) and the file's
        git blob SHA-1 (ETag), except weights, kept in LFS: those are a redirect that names their
        SHA-256 and size (X-Linked-Etag, X-Linked-Size) to storage that sends the bytes."""
        for name, body in files.items():
            whole = (200, {"Content-Length": str(len(body))}, body, None)
            if commit is None:
                answer = whole
            elif name.endswith((".safetensors", ".bin")):
                routes[f"/storage/{sha256(body)}"] = whole
                answer = (302, {"Location": f"/storage/{sha256(body)}", "X-Repo-Commit": commit,
                                "X-Linked-Etag": f'"{sha256(body)}"', "X-Linked-Size": str(len(body)),
                                "Content-Length": "0"}, b"", None)
            else:
                answer = (200, {**whole[1], "X-Repo-Commit": commit, "ETag": f'"{git_sha1(body)}"'},
                          body, None)
            routes[f"/{repo}/resolve/{revision}/{name}"] = overrides.get(name, answer)

    yield SimpleNamespace(url=url, routes=routes, requests=requests, publish=publish)
    httpd.shutdown()
    httpd.server_close()


def sha256(body):
    import hashlib
    return hashlib.sha256(body).hexdigest()


def git_sha1(body):
    """The name git gives a file's content (`git hash-object`), which the hub sends as its ETag."""
    import hashlib
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


@pytest.mark.parametrize("case, answer, message", [
    ("no length, cut short: the header says more than arrives",
     (200, {}, WEIGHTS, len(WEIGHTS) // 2), "its header is longer than the file|do not end where"),
    ("the hub's size, cut short",
     (200, {"X-Linked-Size": str(len(WEIGHTS))}, WEIGHTS, 100), "closed after 100 of"),
    ("the hub's SHA-256 does not match",
     (200, {"X-Linked-Etag": f'"{sha256(b"other")}"'}, WEIGHTS, None), "SHA-256 is not the one"),
])
def test_a_broken_weights_file_is_an_error_and_nothing_is_cached(faulty, case, answer, message):
    faulty.publish("org/bert", BERT_REPO, **{"model.safetensors": answer})
    with pytest.raises(DownloadError, match=message):
        download_model("org/bert")
    folder = model_cache_dir("org/bert")
    assert not (folder / "model.safetensors").exists() and not (folder / ".complete").exists()
    assert not list(folder.rglob("*.tmp"))


def test_a_json_file_cut_short_without_a_length_is_caught(faulty):
    body = BERT_REPO["config.json"]
    faulty.publish("org/bert", BERT_REPO, **{"config.json": (200, {}, body, len(body) - 3)})
    with pytest.raises(DownloadError, match="config.json: it arrived incomplete or damaged"):
        download_model("org/bert")


def test_the_size_and_hash_of_a_redirect_are_checked_on_the_file_it_leads_to(faulty):
    # the hub answers a large file with a redirect carrying its size and SHA-256; the storage
    # it points to sends the bytes (here a different file of the same size)
    other = bytearray(WEIGHTS)
    other[-1] ^= 1
    faulty.publish("org/bert", BERT_REPO, **{"model.safetensors": (
        302, {"Location": "/storage/blob", "X-Linked-Size": str(len(WEIGHTS)),
              "X-Linked-Etag": f'"{sha256(WEIGHTS)}"', "Content-Length": "0"}, b"", None)})
    faulty.routes["/storage/blob"] = (200, {"Content-Length": str(len(other))}, bytes(other), None)
    with pytest.raises(DownloadError, match="SHA-256 is not the one the server announced"):
        download_model("org/bert")
    faulty.routes["/storage/blob"] = (200, {"Content-Length": str(len(WEIGHTS))}, WEIGHTS, None)
    assert (download_model("org/bert") / "model.safetensors").read_bytes() == WEIGHTS


def test_leftovers_of_a_dead_download_go_and_a_damaged_cache_names_its_folder(faulty):
    import os
    import subprocess
    import sys
    faulty.publish("org/bert", BERT_REPO)
    folder = model_cache_dir("org/bert")
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (folder / f"model.safetensors.{dead}.tmp").write_bytes(b"partial")
    alive = os.getppid()  # a process that is still running: its download may be in progress
    (folder / f"pytorch_model.bin.{alive}.tmp").write_bytes(b"in progress")
    download_model("org/bert")
    assert [p.name for p in folder.glob("*.tmp")] == [f"pytorch_model.bin.{alive}.tmp"]
    (folder / "model.safetensors").write_bytes(WEIGHTS[:-10])  # damaged on disk afterwards
    with pytest.raises(DownloadError, match=f"delete the folder {folder} and run again"):
        download_model("org/bert")


def in_hub_cache(cache, repo_id, files, commit="0123456789abcdef0123456789abcdef01234567", revision="main"):
    """Files laid out as huggingface_hub caches them: blobs, snapshot links, a ref."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for name, content in files.items():
        blob = repo / "blobs" / f"{abs(hash(name))}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return repo / "snapshots" / commit


@pytest.mark.parametrize("where", ["HF_HOME", "HF_HUB_CACHE"])
def test_a_model_transformers_already_fetched_is_used_without_a_request(hub, tmp_path, monkeypatch, where):
    cache = tmp_path / "hf-home" / "hub" if where == "HF_HOME" else tmp_path / "elsewhere"
    if where == "HF_HUB_CACHE":
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snapshot = in_hub_cache(cache, "sentence-transformers/all-MiniLM-L6-v2", BERT_REPO)
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == snapshot
    assert hub.requests == []  # the server was never asked
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == snapshot


def test_an_incomplete_hub_snapshot_is_not_used(hub, tmp_path):
    files = {k: v for k, v in BERT_REPO.items() if k != "vocab.txt"}  # transformers fetched no tokenizer
    in_hub_cache(tmp_path / "hf-home" / "hub", "bert-x", files)
    hub.put("bert-x", BERT_REPO)
    assert download_model("bert-x") == model_cache_dir("bert-x")  # fetched into our own
    assert hub.requests


# Downloads into huggingface_hub's cache, shared with transformers

COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
OTHER_COMMIT = "ffffffffffffffffffffffffffffffffffffffff"


def blob_names(files):
    """The blob each file of `files` lies in, in huggingface_hub's cache: the SHA-256 of weights
    (LFS files), the git blob SHA-1 of the others."""
    return {name: sha256(body) if name.endswith(".safetensors") else git_sha1(body)
            for name, body in files.items()}


def test_a_download_that_names_its_commit_lands_in_huggingface_hubs_layout(faulty, monkeypatch,
                                                                             closed_url):
    faulty.publish("org/bert", BERT_REPO, commit=COMMIT)
    repo = hub_cache_dir() / "models--org--bert"
    snapshot = download_model("org/bert")
    assert snapshot == repo / "snapshots" / COMMIT
    assert (repo / "refs" / "main").read_text() == COMMIT
    assert sorted(p.name for p in (repo / "blobs").iterdir()) == sorted(blob_names(BERT_REPO).values())
    for name, blob in blob_names(BERT_REPO).items():
        link = snapshot / name
        assert link.read_bytes() == BERT_REPO[name]
        # a relative link, as huggingface_hub makes: ../../blobs/<hash>, one more ../ per subfolder
        assert os.readlink(link) == "../" * (name.count("/") + 2) + f"blobs/{blob}"
    assert not list(repo.rglob("*.tmp")) and not model_cache_dir("org/bert").exists()
    # later runs find it in the cache and ask the server nothing, online or not
    n_requests = len(faulty.requests)
    assert hub_snapshot("org/bert") == snapshot
    assert resolve_model("org/bert") == snapshot
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", closed_url)
    assert resolve_model("org/bert") == snapshot
    assert len(faulty.requests) == n_requests


def test_a_server_that_names_no_commit_gets_our_own_folder_and_says_so(hub, capsys):
    hub.put("org/bert", BERT_REPO)  # a plain file server: no X-Repo-Commit, no ETag
    assert download_model("org/bert") == model_cache_dir("org/bert")
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if "X-Repo-Commit" in line] == [
        f"{hub.url} does not say which commit it serves (X-Repo-Commit and a hash as ETag): "
        f"org/bert goes to {model_cache_dir('org/bert')}, not to huggingface_hub's cache"]
    assert not hub_cache_dir().exists()  # nothing half made there


def test_files_from_two_commits_go_to_our_own_folder(faulty, capsys):
    # the branch moved between config.json and the rest: no one snapshot holds them all
    faulty.publish("org/bert", {"config.json": BERT_REPO["config.json"]}, commit=OTHER_COMMIT)
    faulty.publish("org/bert", {k: v for k, v in BERT_REPO.items() if k != "config.json"}, commit=COMMIT)
    folder = download_model("org/bert")
    assert folder == model_cache_dir("org/bert")
    for name, content in BERT_REPO.items():
        assert (folder / name).read_bytes() == content
    assert "served files from 2 different commits" in capsys.readouterr().out
    repo = hub_cache_dir() / "models--org--bert"
    assert not (repo / "refs").exists() and not (repo / "snapshots").exists()


def test_a_download_cut_short_leaves_no_snapshot_and_the_rerun_keeps_the_whole_blobs(faulty):
    faulty.publish("org/bert", BERT_REPO, commit=COMMIT)
    storage = f"/storage/{sha256(WEIGHTS)}"
    faulty.routes[storage] = (200, {"Content-Length": str(len(WEIGHTS))}, WEIGHTS, 100)  # drops
    with pytest.raises(DownloadError, match="cannot download .*/org/bert/resolve/main/model.safetensors"):
        download_model("org/bert")
    repo = hub_cache_dir() / "models--org--bert"
    assert hub_snapshot("org/bert") is None
    assert not (repo / "refs").exists() and not (repo / "snapshots").exists()
    config_blob = repo / "blobs" / git_sha1(BERT_REPO["config.json"])
    assert [p.name for p in (repo / "blobs").iterdir()] == [config_blob.name]  # no partial blob
    inode = config_blob.stat().st_ino
    faulty.routes[storage] = (200, {"Content-Length": str(len(WEIGHTS))}, WEIGHTS, None)
    assert download_model("org/bert") == hub_snapshot("org/bert") == repo / "snapshots" / COMMIT
    assert config_blob.stat().st_ino == inode  # kept, not written again


class Killed(BaseException):
    """The process stopping at that point (a kill, a power cut), as far as the cache can tell."""


# 5 blobs, 5 links and 1 ref are renamed into place, each in turn the last thing done; a commit
# hash as revision needs no ref, and then config.json, linked last, is what keeps it from looking done
@pytest.mark.parametrize("revision, stop_at", [("main", i) for i in range(11)] +
                                              [(COMMIT, i) for i in range(10)])
def test_a_download_stopped_at_any_rename_leaves_nothing_that_looks_complete(faulty, monkeypatch,
                                                                              revision, stop_at):
    faulty.publish("org/bert", BERT_REPO, commit=COMMIT, revision=revision)
    renames = []

    def replace(src, dst):
        if len(renames) == stop_at:
            raise Killed
        renames.append(dst)
        real_replace(src, dst)

    real_replace = os.replace
    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            download_model("org/bert", revision)
    repo = hub_cache_dir() / "models--org--bert"
    assert hub_snapshot("org/bert", revision) is None and not (repo / "refs" / revision).exists()
    assert download_model("org/bert", revision) == repo / "snapshots" / COMMIT  # the rerun completes it
    for name, content in BERT_REPO.items():
        assert (repo / "snapshots" / COMMIT / name).read_bytes() == content


def test_a_blob_whose_sha256_is_not_the_announced_one_is_refused(faulty):
    other = bytearray(WEIGHTS)
    other[-1] ^= 1  # same size, one bit off
    faulty.publish("org/bert", BERT_REPO, commit=COMMIT)
    faulty.routes[f"/storage/{sha256(WEIGHTS)}"] = (200, {"Content-Length": str(len(other))},
                                                   bytes(other), None)
    with pytest.raises(DownloadError, match="SHA-256 is not the one the server announced"):
        download_model("org/bert")
    repo = hub_cache_dir() / "models--org--bert"
    assert not (repo / "blobs" / sha256(WEIGHTS)).exists() and hub_snapshot("org/bert") is None


def test_without_symlinks_the_snapshot_holds_copies(faulty, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError("symbolic links are not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    faulty.publish("org/bert", BERT_REPO, commit=COMMIT)
    snapshot = download_model("org/bert")
    assert hub_snapshot("org/bert") == snapshot
    for name, content in BERT_REPO.items():
        assert not (snapshot / name).is_symlink() and (snapshot / name).read_bytes() == content


def test_a_second_revision_shares_the_blobs_it_has_in_common(faulty):
    faulty.publish("org/bert", BERT_REPO, commit=COMMIT)
    download_model("org/bert")
    changed = {**BERT_REPO, "config.json": b'{"model_type": "bert", "hidden_act": "gelu"}'}
    faulty.publish("org/bert", changed, commit=OTHER_COMMIT, revision="v2")
    n_requests = len(faulty.requests)
    snapshot = download_model("org/bert", revision="v2")
    assert snapshot == hub_cache_dir() / "models--org--bert" / "snapshots" / OTHER_COMMIT
    assert (snapshot / "config.json").read_bytes() == changed["config.json"]
    # the weights were not fetched again: the hub's redirect told their hash, and the blob was there
    assert f"/storage/{sha256(WEIGHTS)}" not in faulty.requests[n_requests:]
    assert os.path.samefile(snapshot / "model.safetensors",
                            snapshot.parent / COMMIT / "model.safetensors")
