"""
Downloads for users who are online, with urllib only: a model from the Hugging Face hub, and GLUE
from its official distribution, into caches that later runs reuse.

    from pretrained.hub import resolve_model, download_glue
    model_dir = resolve_model("sentence-transformers/all-MiniLM-L6-v2")  # a local folder, or a hub id
    glue_dir = download_glue(["sst2", "mrpc"])                            # a folder for --data-dir

Models. The hub serves a file at `{HF_ENDPOINT}/{repo_id}/resolve/{revision}/{filename}`
(HUGGINGFACE_CO_URL_TEMPLATE in huggingface_hub's constants.py). The variables mean what
huggingface_hub documents (https://huggingface.co/docs/huggingface_hub/package_reference/environment_variables):
HF_ENDPOINT (default https://huggingface.co), HF_HOME (default $XDG_CACHE_HOME/huggingface, that is
~/.cache/huggingface), HF_TOKEN (a bearer token), HF_HUB_OFFLINE=1 (no request: the cache only).
We fetch what checkpoint.load_checkpoint and the tokenizer read: config.json; model.safetensors, or
pytorch_model.bin if the repository has no safetensors; vocab.txt (BERT) or vocab.json and
merges.txt (RoBERTa); and, if the repository has them, tokenizer_config.json,
special_tokens_map.json and sentence-transformers' 1_Pooling/config.json. A model that
transformers (huggingface_hub) has already fetched is used where it lies, with no request:
huggingface_hub's cache (HF_HUB_CACHE, else $HF_HOME/hub) holds it as
models--<namespace>--<name>/snapshots/<commit>/, the commit named by refs/<revision>. Otherwise
the files land in a plain folder that --model can name, fetched once and not refreshed (delete
the folder to fetch a moved branch again):

    $HF_HOME/osrm-min/models/<namespace>--<name>/<revision>/config.json, model.safetensors, ...
                                                           /.complete  (last: later calls ask nothing)

GLUE. The layout of download_glue_data.py (github.com/nyu-mll/GLUE-baselines): each task's zip at
https://dl.fbaipublicfiles.com/glue/data unpacks to its folder (QQP's zip is QQP-clean.zip, QNLI's
QNLIv2.zip). GLUE does not host MRPC; the script builds it from SentEval's msr_paraphrase_train.txt
and msr_paraphrase_test.txt (https://dl.fbaipublicfiles.com/senteval/senteval_data) and GLUE's
mrpc_dev_ids.tsv: training pairs on that list are dev.tsv, the others train.tsv.

    $XDG_CACHE_HOME/osrm-min/glue/CoLA/, SST-2/, MRPC/, STS-B/, QQP/, MNLI/, QNLI/, RTE/

A mirror (`base_url`, or GLUE_BASE_URL) is one folder with the zips and MRPC's three files;
MRPC_BASE_URL, if set, says where SentEval's two are instead. A task whose train and dev files
exist is not fetched again. Files are written under a temporary name and tasks unpacked in a
temporary folder, each renamed when whole: an interrupted download leaves nothing that looks done.
"""

import hashlib
import http.client
import json
import os
import re
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

import data

TIMEOUT = 30  # seconds a connection or a read may stall before the download counts as failed
MODEL_HINT = "pass --model PATH to a local folder, or set HF_ENDPOINT"
GLUE_HINT = "pass --data-dir DIR or set GLUE_DIR to a local GLUE folder, or GLUE_BASE_URL to a mirror"


class DownloadError(Exception):
    """A download that failed; str(e) is one line: what failed, and what to use instead."""


class HeaderLog(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, keeping the headers of every response on the way: the
    hub answers a large file with a redirect whose headers give its size and SHA-256
    (X-Linked-Size, X-Linked-Etag; huggingface_hub's constants.py), which the storage it
    redirects to does not repeat."""

    def __init__(self):
        self.headers = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def expected_size_and_sha256(headers):
    """(size or None, sha256 hex or None) from the responses' headers, first answer first."""
    size = sha256 = None
    for h in headers:
        size = size or h.get("X-Linked-Size")
        etag = (h.get("X-Linked-Etag") or "").removeprefix("W/").strip('"')
        sha256 = sha256 or (etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None)
    size = size or headers[-1].get("Content-Length")
    return (int(size) if size and size.isdigit() else None), sha256


def check_content(path, name=None):
    """Why the file at `path` cannot be what its name (`name`, else its own) says ('' if
    nothing is wrong): a safetensors file must hold its header and every byte it announces, a
    JSON file must parse, a text file must be UTF-8."""
    suffix = Path(name or path.name).suffix
    try:
        if suffix == ".safetensors":
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > path.stat().st_size - 8:
                    return "its header is longer than the file"
                header = json.loads(f.read(n))
            ends = [info["data_offsets"][1] for k, info in header.items() if k != "__metadata__"]
            if 8 + n + max(ends, default=0) != path.stat().st_size:
                return "its tensors do not end where the file does"
        elif suffix == ".json":
            if not isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
                return "it is not a JSON object"
        elif suffix == ".txt":
            path.read_text(encoding="utf-8")
    except (ValueError, KeyError, TypeError, IndexError, struct.error, RecursionError) as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())[:80]}"
    return ""


def fetch(url, path, hint, token=None, optional=False):
    """Download `url` to `path`; False when `optional` and the server answers 404 (no such file).

    The body is checked before it takes its name: its size against Content-Length or the hub's
    X-Linked-Size, its SHA-256 against the hub's X-Linked-Etag when it sends one, and its content
    (check_content). A file already at `path` is whole, so it is kept and not fetched again.
    Any failure is a DownloadError that ends with `hint`.
    """
    if path.exists():
        return True
    request = urllib.request.Request(url)
    if token:  # unredirected: the hub may redirect to storage that must not see the token
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process, so two runs don't collide
    log = HeaderLog()
    try:
        with urllib.request.build_opener(log).open(request, timeout=TIMEOUT) as response:
            size, sha256 = expected_size_and_sha256(log.headers + [response.headers])
            path.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(tmp, "wb") as f, tqdm(total=size, desc=path.name, unit="B", unit_scale=True,
                                            unit_divisor=1024) as bar:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    bar.update(f.write(chunk))
        got = tmp.stat().st_size
        if size is not None and got != size:
            raise DownloadError(f"cannot download {url}: the connection closed after {got} of "
                                f"{size} bytes; run again, or {hint}")
        if sha256 and digest.hexdigest() != sha256:
            raise DownloadError(f"cannot download {url}: its SHA-256 is not the one the server "
                                f"announced (a damaged transfer); run again, or {hint}")
        why = check_content(tmp, path.name)
        if why:
            raise DownloadError(f"cannot download {url}: it arrived incomplete or damaged ({why}); "
                                f"run again, or {hint}")
        os.replace(tmp, path)
        return True
    except urllib.error.HTTPError as e:
        if optional and e.code == 404:
            return False
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}; {hint}") from None
    except (OSError, http.client.HTTPException) as e:  # refused, unreachable, timed out, cut short
        reason = " ".join((str(getattr(e, "reason", e)) or type(e).__name__).split())  # one line
        raise DownloadError(f"cannot download {url}: {reason}; {hint}") from None
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale(folder, pattern):
    """Remove what an interrupted download left in `folder` (names holding the pid of a process
    that is gone); a download in progress in another process is left alone."""
    for path in Path(folder).glob(pattern):
        pid = next((int(part) for part in re.split(r"[.-]", path.name) if part.isdigit()), None)
        try:
            if pid is not None:
                os.kill(pid, 0)  # signal 0: only asks whether the process exists
                continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # it exists, as another user's
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


# Models from the Hugging Face hub

# Alternatives, in order of preference: the first one whose first file the repository has is fetched.
WEIGHTS = (("model.safetensors",), ("pytorch_model.bin",))
TOKENIZERS = (("vocab.txt",), ("vocab.json", "merges.txt"))  # BERT's WordPiece, RoBERTa's BPE
OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json", "1_Pooling/config.json")

# A hub id, "name" or "namespace/name": huggingface_hub's REPO_ID_REGEX (utils/_validators.py),
# which also forbids "--" and ".." in an id.
HUB_ID = re.compile(r"(\b[\w\-.]+\b/)?\b[\w\-.]{1,96}\b")


def cache_home():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()


def model_cache_dir(repo_id, revision="main"):
    """Where download_model puts `repo_id` at `revision` (see the layout above)."""
    hf_home = Path(os.environ.get("HF_HOME") or cache_home() / "huggingface").expanduser()
    # "/" would nest folders (and revisions such as refs/pr/1 have one); "--" as huggingface_hub's cache
    return hf_home / "osrm-min" / "models" / repo_id.replace("/", "--") / revision.replace("/", "--")


def hub_cache_dir():
    """huggingface_hub's own cache: HF_HUB_CACHE, else $HF_HOME/hub."""
    hf_home = Path(os.environ.get("HF_HOME") or cache_home() / "huggingface").expanduser()
    return Path(os.environ.get("HF_HUB_CACHE") or hf_home / "hub").expanduser()


def hub_snapshot(repo_id, revision="main"):
    """The snapshot folder of `repo_id` at `revision` in huggingface_hub's cache (the commit that
    refs/<revision> names, or `revision` itself if it is a commit hash), if it holds every file
    load_checkpoint and the tokenizer read; else None."""
    repo = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    try:
        commit = ref.read_text().strip() if ref.is_file() else revision
    except OSError:
        return None
    folder = repo / "snapshots" / commit
    if not re.fullmatch(r"[0-9a-f]{40}", commit) or not (folder / "config.json").is_file():
        return None
    has = lambda files: all((folder / f).is_file() for f in files)
    return folder if any(map(has, WEIGHTS)) and any(map(has, TOKENIZERS)) else None


def download_model(repo_id, revision="main"):
    """The folder of hub model `repo_id` at `revision`: in huggingface_hub's cache if it is
    there (hub_snapshot), else in ours, downloaded if it is not there either."""
    snapshot = hub_snapshot(repo_id, revision)
    if snapshot is not None:
        for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
            why = check_content(path)
            if why:
                raise DownloadError(f"{path} in huggingface_hub's cache is damaged ({why}); delete "
                                    f"it and run again, or pass --model PATH to a local folder")
        return snapshot
    folder = model_cache_dir(repo_id, revision)
    complete = folder / ".complete"
    if complete.exists():
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".complete"):
            why = check_content(path)
            if why:
                raise DownloadError(f"the cached {path} is damaged ({why}); delete the folder "
                                    f"{folder} and run again to download it anew")
        return folder
    if folder.is_dir():
        remove_stale(folder, "**/*.tmp")
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise DownloadError(f"HF_HUB_OFFLINE is set and {repo_id} ({revision}) is not in the cache "
                            f"{folder}; unset HF_HUB_OFFLINE, or pass --model PATH to a local folder")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    token = os.environ.get("HF_TOKEN")

    def get(filename, optional=False):
        url = f"{endpoint}/{repo_id}/resolve/{revision}/{filename}"
        return fetch(url, folder / filename, MODEL_HINT, token, optional)

    get("config.json")
    for choices in (WEIGHTS, TOKENIZERS):
        for files in choices:
            if get(files[0], optional=True):  # a 404 on the first file: try the next alternative
                for filename in files[1:]:
                    get(filename)
                break
        else:
            wanted = " or ".join(" + ".join(files) for files in choices)
            raise DownloadError(f"{repo_id} ({revision}) has no {wanted} on {endpoint}; {MODEL_HINT}")
    for filename in OPTIONAL:
        get(filename, optional=True)
    complete.write_text("")
    return folder


def resolve_model(arg, revision="main"):
    """--model's value: an existing local folder as it is, else a hub id such as
    "FacebookAI/roberta-large" or "sentence-transformers/all-MiniLM-L6-v2", downloaded."""
    path = Path(arg).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists() or not HUB_ID.fullmatch(arg) or "--" in arg or ".." in arg:
        raise DownloadError(f"--model {arg} is neither a local folder nor a Hugging Face hub id "
                            f"(such as FacebookAI/roberta-large)")
    try:
        return download_model(arg, revision)
    except DownloadError as e:
        raise DownloadError(f"--model {arg} (not a local folder, so a hub id): {e}") from None


# GLUE from its official distribution

GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data"
SENTEVAL_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data"
# GLUE folder -> its zip on the GLUE server (download_glue_data.py's TASK2PATH); MRPC is built.
GLUE_ZIPS = {"CoLA": "CoLA.zip", "SST-2": "SST-2.zip", "MRPC": None, "STS-B": "STS-B.zip",
             "QQP": "QQP-clean.zip", "MNLI": "MNLI.zip", "QNLI": "QNLIv2.zip", "RTE": "RTE.zip"}


def glue_cache_dir():
    return cache_home() / "osrm-min" / "glue"


def has_splits(folder):
    """A task folder is complete when it has its train and dev files (MNLI: dev_matched.tsv)."""
    dev_files = ("dev.tsv", "dev_matched.tsv")
    return (folder / "train.tsv").is_file() and any((folder / f).is_file() for f in dev_files)


def download_glue(tasks, dest=None, base_url=None):
    """Download the GLUE `tasks` ("sst2" or "SST-2" spellings) that `dest` lacks; returns `dest`."""
    dest = Path(dest).expanduser() if dest else glue_cache_dir()
    base = (base_url or os.environ.get("GLUE_BASE_URL") or GLUE_URL).rstrip("/")
    # SentEval's MRPC files: MRPC_BASE_URL, else beside the zips on a mirror, else SentEval's server
    senteval = os.environ.get("MRPC_BASE_URL") or (SENTEVAL_URL if base == GLUE_URL else base)
    senteval = senteval.rstrip("/")
    for name in data.parse_tasks(",".join(tasks)):  # "sst2" or "SST-2"; unknown: a DataError
        folder = data.TASKS[name].folder
        target = dest / folder
        if has_splits(target):
            continue
        if target.exists():  # never delete what may be the user's own files
            raise DownloadError(f"{target} exists without its train and dev files; move it away and "
                                f"rerun, or {GLUE_HINT}")
        dest.mkdir(parents=True, exist_ok=True)
        remove_stale(dest, f".{folder}-*")
        with tempfile.TemporaryDirectory(dir=dest, prefix=f".{folder}-{os.getpid()}-") as tmp:
            tmp = Path(tmp)
            if folder == "MRPC":
                build_mrpc(tmp / "MRPC", base, senteval)
            else:
                unzip(f"{base}/{GLUE_ZIPS[folder]}", tmp)
            if not has_splits(tmp / folder):
                raise DownloadError(f"{base}: {folder} came without {folder}/train.tsv and its dev "
                                    f"file; {GLUE_HINT}")
            os.replace(tmp / folder, target)
    return dest


def unzip(url, tmp):
    """Download the zip at `url` into the folder `tmp` and unpack it there."""
    path = tmp / url.rsplit("/", 1)[1]
    fetch(url, path, GLUE_HINT)
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():  # refuse names that would land outside tmp ("../x", "/x")
                if not (tmp / name).resolve().is_relative_to(tmp.resolve()):
                    raise DownloadError(f"{url} holds {name!r}, outside its folder; {GLUE_HINT}")
            z.extractall(tmp)
    except zipfile.BadZipFile:
        raise DownloadError(f"{url} is not a zip file; {GLUE_HINT}") from None


def read_mrpc(path):
    """The header line and rows [quality, id1, id2, s1, s2] of a SentEval file, read as the script does."""
    with open(path, encoding="utf-8") as f:
        header = f.readline()  # "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n", BOM and all
        rows = [row.strip().split("\t") for row in f]
    if any(len(row) != 5 for row in rows):
        raise DownloadError(f"{path.name} is not SentEval's MRPC file (5 tab-separated columns); "
                            f"{GLUE_HINT}")
    return header, rows


def build_mrpc(out, glue_base, senteval_base):
    """MRPC as download_glue_data.py's format_mrpc makes it: train.tsv and dev.tsv are SentEval's
    training pairs split by GLUE's dev ids, under the SentEval header; test.tsv is indexed."""
    out.mkdir()
    for url, name in ((f"{senteval_base}/msr_paraphrase_train.txt", "msr_paraphrase_train.txt"),
                      (f"{senteval_base}/msr_paraphrase_test.txt", "msr_paraphrase_test.txt"),
                      (f"{glue_base}/mrpc_dev_ids.tsv", "dev_ids.tsv")):
        fetch(url, out / name, GLUE_HINT)
    with open(out / "dev_ids.tsv", encoding="utf-8") as f:
        dev_ids = {tuple(row.strip().split("\t")) for row in f}  # (id1, id2) pairs
    header, rows = read_mrpc(out / "msr_paraphrase_train.txt")
    split = {"train.tsv": [header], "dev.tsv": [header]}
    for row in rows:
        split["dev.tsv" if tuple(row[1:3]) in dev_ids else "train.tsv"].append("\t".join(row) + "\n")
    _, rows = read_mrpc(out / "msr_paraphrase_test.txt")
    split["test.tsv"] = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"]
    split["test.tsv"] += [f"{i}\t" + "\t".join(row[1:]) + "\n" for i, row in enumerate(rows)]
    for name, lines in split.items():
        (out / name).write_text("".join(lines), encoding="utf-8", newline="\n")
