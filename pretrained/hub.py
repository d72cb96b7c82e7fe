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
special_tokens_map.json and sentence-transformers' 1_Pooling/config.json.

Where a model lies. transformers and we share huggingface_hub's cache (HF_HUB_CACHE, else
$HF_HOME/hub; https://huggingface.co/docs/hub/local-cache): a model either of us fetched is used
where it lies, with no request. Its layout, as huggingface_hub's file_download.py writes it:

    models--<namespace>--<name>/blobs/<hash>        the files' bytes, each named by its hash
                               /snapshots/<commit>/config.json -> ../../blobs/<hash>, ...
                               /refs/<revision>     the commit hash that <revision> stands for

The hub's answer to a resolve URL names the commit it serves (X-Repo-Commit) and the file's hash:
X-Linked-Etag, the SHA-256 of a file kept in LFS (the weights), else ETag, the git blob SHA-1
(huggingface_hub's constants.py and get_hf_file_metadata). When every file comes with the same
commit, the download goes there: each blob under a temporary name, renamed when checked; the
snapshot's links once every blob is whole; refs/<revision> last. A run that stops leaves no
snapshot that looks complete, and the next one keeps the whole blobs. A server that names no
commit (a plain mirror), or files of two commits (a branch that moved meanwhile), gets a plain
folder instead, as one printed line says; --model can name it, and it is fetched once and not
refreshed (delete the folder to fetch a moved branch again):

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

import contextlib
import hashlib
import http.client
import io
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


class NotFound(DownloadError):
    """The server answered HTTP 404: it has no such file."""


class Stop(Exception):
    """Raised by HeaderLog at a redirect that need not be followed."""


class HeaderLog(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, keeping the headers of every response on the way: the
    hub answers a large file with a redirect whose headers give its size and SHA-256
    (X-Linked-Size, X-Linked-Etag; huggingface_hub's constants.py), which the storage it
    redirects to does not repeat. `stop(headers so far)`, if given, may end the walk at a
    redirect: there is no need to ask the storage for a file we hold already."""

    def __init__(self, stop=None):
        self.headers = []
        self.stop = stop

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        if self.stop and self.stop(self.headers):
            fp.close()
            raise Stop
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


def open_url(url, token=None, stop=None):
    """GET `url`: the open response, and the headers of every answer on the way (redirects
    first); an empty body where `stop` ended the walk at a redirect (see HeaderLog)."""
    request = urllib.request.Request(url)
    if token:  # unredirected: the hub may redirect to storage that must not see the token
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    log = HeaderLog(stop)
    try:
        response = urllib.request.build_opener(log).open(request, timeout=TIMEOUT)
    except Stop:
        return io.BytesIO(), log.headers
    return response, log.headers + [response.headers]


@contextlib.contextmanager
def reported(url, hint):
    """Turns whatever goes wrong while downloading `url` into a one-line DownloadError that ends
    with `hint` (NotFound for an HTTP 404)."""
    try:
        yield
    except urllib.error.HTTPError as e:
        error = NotFound if e.code == 404 else DownloadError
        raise error(f"cannot download {url}: HTTP {e.code} {e.reason}; {hint}") from None
    except (OSError, http.client.HTTPException) as e:  # refused, unreachable, timed out, cut short
        reason = " ".join((str(getattr(e, "reason", e)) or type(e).__name__).split())  # one line
        raise DownloadError(f"cannot download {url}: {reason}; {hint}") from None


def save(url, response, headers, path, name, hint):
    """Write the body of `response` to `path`, checked before it takes that name: its size
    against Content-Length or the hub's X-Linked-Size, its SHA-256 against the hub's
    X-Linked-Etag when it sends one, and its content as the file `name` (check_content)."""
    size, sha256 = expected_size_and_sha256(headers)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process, so two runs don't collide
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(tmp, "wb") as f, tqdm(total=size, desc=Path(name).name, unit="B", unit_scale=True,
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
        why = check_content(tmp, name)
        if why:
            raise DownloadError(f"cannot download {url}: it arrived incomplete or damaged ({why}); "
                                f"run again, or {hint}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(url, path, hint, token=None, optional=False):
    """Download `url` to `path` (see save); False when `optional` and the server answers 404 (no
    such file). A file already at `path` is whole, so it is kept and not fetched again. Any
    failure is a DownloadError that ends with `hint`."""
    if path.exists():
        return True
    try:
        with reported(url, hint):
            response, headers = open_url(url, token)
            with response:
                save(url, response, headers, path, path.name, hint)
    except NotFound:
        if optional:
            return False
        raise
    return True


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


def hub_repo_dir(repo_id):
    """The folder of `repo_id` in huggingface_hub's cache (its repo_folder_name)."""
    return hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"


def hub_snapshot(repo_id, revision="main"):
    """The snapshot folder of `repo_id` at `revision` in huggingface_hub's cache (the commit that
    refs/<revision> names, or `revision` itself if it is a commit hash), if it holds every file
    load_checkpoint and the tokenizer read; else None."""
    repo = hub_repo_dir(repo_id)
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


def commit_and_blob(headers):
    """(commit, blob name) under which huggingface_hub files this answer, or (None, None) when the
    server does not say. Both come from the hub's own answer, the one with X-Repo-Commit (not
    the storage a large file is redirected to): the blob is named by X-Linked-Etag, the SHA-256
    of a file kept in LFS, else by ETag, the git blob SHA-1 of a small file."""
    for h in headers:
        commit = h.get("X-Repo-Commit")
        if commit:
            blob = (h.get("X-Linked-Etag") or h.get("ETag") or "").strip('"')
            # only a hash becomes a name (a git SHA-1 or a SHA-256): no header leads outside blobs/
            is_hash = re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", blob)
            if is_hash and re.fullmatch(r"[0-9a-f]{40}", commit):
                return commit, blob
    return None, None


def is_whole(path, headers, name):
    """Whether `path` already holds the whole file that `headers` announce: a blob that an earlier
    run, ours or huggingface_hub's, completed, kept then and not fetched again. A blob takes its
    name only once checked, so its size and content (as the file `name`) are checked here, not
    its hash, which would mean reading gigabytes again."""
    size, _ = expected_size_and_sha256(headers)
    return (path.is_file() and (size is None or path.stat().st_size == size)
            and not check_content(path, name))


def fetch_model_file(url, filename, folder, repo, token=None):
    """Download the model's `filename` from `url`: (where its bytes now lie, the commit the server
    served it from or None). The bytes go to huggingface_hub's blobs/ in `repo` when the server
    names the commit and the file's hash, a blob held already being kept and not fetched again;
    else to our `folder`, where a file already there is kept too. An HTTP 404 is NotFound."""
    path = folder / filename
    if path.exists():  # our folder has it already, from a run that stopped
        return path, None

    def held(headers):  # whether the blob these headers name is whole in huggingface_hub's cache
        served, blob = commit_and_blob(headers)
        return served is not None and is_whole(repo / "blobs" / blob, headers, filename)

    with reported(url, MODEL_HINT):
        response, headers = open_url(url, token, stop=held)
        with response:  # left unread when its blob is held already
            commit, blob = commit_and_blob(headers)
            if commit is not None:  # huggingface_hub's blobs, shared by every commit with this file
                path = repo / "blobs" / blob
            if commit is None or not held(headers):
                save(url, response, headers, path, filename, MODEL_HINT)
    return path, commit


def write_snapshot(repo, commit, revision, blobs):
    """snapshots/<commit>/ of huggingface_hub's cache made from `blobs` ({filename: blob path},
    every blob whole and checked), then refs/<revision> naming the commit. Ordered so that an
    interruption leaves nothing hub_snapshot takes as complete: config.json, which it looks for,
    is linked last, and the ref, which it reads first, is written after every link.

    Each link is a relative symlink (../../blobs/<hash>) as huggingface_hub makes them, or a copy
    of the blob where the filesystem has no symlinks (as huggingface_hub does on Windows). Links
    and ref are made under a temporary name in the repository's folder (where huggingface_hub
    keeps its own temporary files) and renamed: none is ever seen half made."""
    snapshot = repo / "snapshots" / commit
    tmp = repo / f"osrm-min.{os.getpid()}.tmp"
    for filename in sorted(blobs, key=lambda f: f == "config.json"):  # False < True: config.json last
        link = snapshot / filename
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        try:  # the link's text is relative to where it will lie, not to where tmp lies
            os.symlink(os.path.relpath(blobs[filename], link.parent), tmp)
        except OSError:
            shutil.copyfile(blobs[filename], tmp)
        os.replace(tmp, link)
    if revision != commit:  # a commit hash needs no ref (huggingface_hub writes none either)
        ref = repo / "refs" / revision  # a revision such as refs/pr/1 nests
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(commit)
        os.replace(tmp, ref)
    return snapshot


def download_model(repo_id, revision="main"):
    """The folder of hub model `repo_id` at `revision`: in huggingface_hub's cache if it is
    there (hub_snapshot), else in our own folder if an earlier run put it there, else
    downloaded: into huggingface_hub's cache when the server says which commit it serves
    (X-Repo-Commit), the same one for every file; else (a plain mirror) into our folder."""
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
    repo = hub_repo_dir(repo_id)
    # what a run that died left: in our folder, in blobs/, and links or a ref in the repo's folder
    for place, pattern in ((folder, "**/*.tmp"), (repo / "blobs", "*.tmp"), (repo, "*.tmp")):
        if place.is_dir():
            remove_stale(place, pattern)
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise DownloadError(f"HF_HUB_OFFLINE is set and {repo_id} ({revision}) is neither in "
                            f"huggingface_hub's cache {repo} nor in ours {folder}; unset "
                            f"HF_HUB_OFFLINE, or pass --model PATH to a local folder")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    token = os.environ.get("HF_TOKEN")
    fetched = {}  # filename -> (where its bytes lie, the commit it was served from or None)

    def get(filename, optional=False):
        url = f"{endpoint}/{repo_id}/resolve/{revision}/{filename}"
        try:
            fetched[filename] = fetch_model_file(url, filename, folder, repo, token)
        except NotFound:
            if optional:
                return False
            raise
        return True

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

    commits = {commit for _, commit in fetched.values()}
    if len(commits) == 1 and None not in commits:
        return write_snapshot(repo, commits.pop(), revision, {f: p for f, (p, _) in fetched.items()})
    why = ("does not say which commit it serves (X-Repo-Commit and a hash as ETag)" if None in commits
           else f"served files from {len(commits)} different commits")
    print(f"{endpoint} {why}: {repo_id} goes to {folder}, not to huggingface_hub's cache")
    for filename, (path, commit) in fetched.items():
        if commit:  # a blob already in huggingface_hub's cache: copied, not fetched again
            target = folder / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
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
