"""``mechtests datasets fetch``: the paper's datasets, downloaded, checked and pinned.

Du et al. read their data from three places, and this command fetches each file from where the
paper's code reads it, at a pinned commit:

* ``du2025/`` and ``du2025_outputs/``: the paper's repository (HZD01/post-training-mechanistic-
  analysis, commit 4abef9d2), folder ``Knowledge+Truthfulness/datasets/`` (the statement CSVs,
  ``tulu_extracted.csv``, ``few_shot_samples.json``, ...) and ``experimental_outputs/``;
* ``advbench/harmful_behaviors.csv`` (AdvBench, the harmful instructions) and
  ``alpaca/alpaca_no_input.json`` (Alpaca instructions with an empty input, the harmless ones)
  as redistributed by andyrdt/refusal_direction (``dataset/raw/advbench.csv``,
  ``dataset/processed/alpaca.json``); AdvBench's own URL, the one ``Refusal/utils.py`` reads,
  is a mirror;
* ``refusal_splits/du2025_refusal_splits.json`` is not published anywhere: it is rebuilt here
  from the two files above with the paper code's split (:func:`mechtests.data.refusal.paper_split`,
  ``train_test_split(test_size=0.2, random_state=42)``, then ``train[:128]``, ``test[:100]``).

``datasets_manifest.yaml`` (beside this module) pins every file: relative path, source URL,
mirrors, sha256, size and license. Each download goes to a temporary file in the target folder,
is checked against the pinned sha256 and only then renamed onto its path (atomic ``replace``),
so an interrupted or corrupted download never leaves a file the suite could read. A file already
present with the right sha256 is not downloaded again. A sha256 mismatch is a one-line
:class:`~mechtests.errors.DatasetError` (what, expected, got, fix).

The folder written has the layout the suite reads (see :mod:`mechtests.data.sources`); by
default it is ``datasets/`` in the user data dir (``platformdirs.user_data_dir("mechtests")``).
A complete fetch writes a marker into it and records it in the user data dir, and from then on
it is the default ``--mechtests-datasets`` (:func:`fetched_datasets_dir`); the option and
``$MECHTESTS_DATASETS`` still win.

The sha256 were computed from byte-for-byte copies of the upstream files. The machine this was
written on reaches no host but PyPI, so the GitHub URLs themselves were never downloaded here:
the tests serve small files from a loopback HTTP server with a test manifest.

Example::

    mechtests datasets fetch                       # into the user data dir; becomes the default
    mechtests datasets fetch --dest ~/data/du2025 --base-url https://mirror.example/du2025
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from mechtests.errors import ConfigError, DatasetError, MechTestsError

__all__ = [
    "MANIFEST_FILE",
    "ChecksumMismatch",
    "FetchResult",
    "ManifestEntry",
    "add_datasets_subparser",
    "default_dest",
    "fetch_datasets",
    "fetched_datasets_dir",
    "load_manifest",
    "refusal_splits_bytes",
    "run_datasets",
    "sha256_file",
]

MANIFEST_FILE = Path(__file__).with_name("datasets_manifest.yaml")
MARKER_NAME = ".mechtests-datasets.json"  # written into the folder last, after every file checked
POINTER_NAME = "datasets.json"  # in the user data dir: the folder of the last complete fetch
BUILDERS = ("refusal_splits",)
_CHUNK = 1 << 16
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ChecksumMismatch(DatasetError):
    """A downloaded or rebuilt file whose sha256 is not the pinned one."""


@dataclass(frozen=True)
class ManifestEntry:
    """One pinned file: where it goes, where it comes from, what its bytes must hash to."""

    path: str  # relative to the datasets folder, e.g. "du2025/cities.csv"
    sha256: str
    size: int
    license: str
    url: str | None = None  # None for a file rebuilt locally (``build``)
    mirrors: tuple[str, ...] = ()
    build: str | None = None  # "refusal_splits": rebuilt from ``inputs`` (advbench, alpaca)
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchResult:
    """What a fetch did, file by file (relative paths)."""

    dest: Path
    downloaded: tuple[str, ...]
    kept: tuple[str, ...]
    built: tuple[str, ...]


def data_home() -> Path:
    """The user data dir of mechtests (``platformdirs``)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("mechtests"))


def default_dest() -> Path:
    """Where ``mechtests datasets fetch`` writes without ``--dest``."""
    return data_home() / "datasets"


def _entry(raw: Any, manifest: Path, index: int) -> ManifestEntry:
    where = f"manifest {manifest}, file #{index + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is {raw!r}; expected a mapping. Fix: correct the manifest.")
    path = str(raw.get("path") or "")
    if not path or Path(path).is_absolute() or ".." in Path(path).parts:
        raise ConfigError(f"{where} has path {path!r}; expected a relative path inside the "
                          "datasets folder. Fix: correct its 'path'.")
    sha = str(raw.get("sha256") or "")
    if not _SHA256.fullmatch(sha):
        raise ConfigError(f"{where} ({path}) has sha256 {sha!r}; expected 64 lowercase hex "
                          "digits. Fix: put the file's sha256 there.")
    url, build = raw.get("url"), raw.get("build")
    if (url is None) == (build is None) or (build is not None and build not in BUILDERS):
        raise ConfigError(f"{where} ({path}) has url {url!r} and build {build!r}; expected "
                          f"exactly one: a url, or build in {list(BUILDERS)}. Fix: correct it.")
    inputs = tuple(str(x) for x in raw.get("inputs") or ())
    if build is not None and len(inputs) != 2:
        raise ConfigError(f"{where} ({path}) builds {build} from {list(inputs)}; expected 2 "
                          "inputs (advbench csv, alpaca json). Fix: list them under 'inputs'.")
    return ManifestEntry(path=path, sha256=sha, size=int(raw.get("size") or 0),
                         license=str(raw.get("license") or ""),
                         url=None if url is None else str(url),
                         mirrors=tuple(str(m) for m in raw.get("mirrors") or ()),
                         build=None if build is None else str(build), inputs=inputs)


def load_manifest(path: Path = MANIFEST_FILE) -> tuple[ManifestEntry, ...]:
    """The entries of a manifest file (``files:`` list), each checked."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"datasets manifest {path} cannot be read ({exc}). Fix: pass a "
                          "readable YAML file with a 'files:' list.".replace("\n", " ")) from None
    files = raw.get("files") if isinstance(raw, dict) else None
    if not isinstance(files, list) or not files:
        raise ConfigError(f"datasets manifest {path} has no 'files:' list. Fix: list the files "
                          "with path, url, sha256, size and license.")
    return tuple(_entry(item, Path(path), i) for i, item in enumerate(files))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _mismatch(what: str, expected: str, got: str, fix: str) -> ChecksumMismatch:
    return ChecksumMismatch(f"{what}: sha256 mismatch, expected {expected}, got {got}. Fix: {fix}")


def _write_atomically(target: Path, fill: Callable[[Any], str]) -> None:
    """``fill(fh)`` writes a temporary file beside ``target`` and returns its sha256; the file is
    renamed onto ``target`` only if ``fill`` returns, and removed on any error or interrupt."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as umask allows
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _download(entry: ManifestEntry, url: str, target: Path, timeout: float) -> None:
    """``url`` to ``target`` through a checked temporary file."""
    limit = 4 * entry.size + (1 << 20)  # a bound on what a wrong server may send

    def fill(fh: Any) -> str:
        digest, n = hashlib.sha256(), 0
        with urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(_CHUNK), b""):
                n += len(block)
                if n > limit:
                    raise DatasetError(f"dataset file {entry.path} from {url} is larger than "
                                       f"{limit} bytes; expected {entry.size}. Fix: check the "
                                       "URL (or --base-url) serves the pinned file.")
                digest.update(block)
                fh.write(block)
            announced = response.headers.get("Content-Length")
        if announced is not None and announced.isdigit() and n != int(announced):
            raise DatasetError(
                f"dataset file {entry.path} could not be downloaded from {url} (the connection "
                f"ended after {n} of {announced} bytes); nothing was written. Fix: rerun the "
                "fetch (files already checked are kept), or pass --base-url of a mirror.")
        got = digest.hexdigest()
        if got != entry.sha256:
            raise _mismatch(f"dataset file {entry.path} from {url} ({n} bytes, expected "
                            f"{entry.size})", entry.sha256, got,
                            "the source changed or the download was corrupted; retry, or pass "
                            "--base-url of a mirror that holds the pinned files.")
        return got

    try:
        _write_atomically(target, fill)
    except DatasetError:
        raise
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as exc:
        raise DatasetError(
            f"dataset file {entry.path} could not be downloaded from {url} ({_one_line(exc)}); "
            "nothing was written. Fix: check the network and rerun (files already checked are "
            "kept), pass --base-url of a mirror, or point --mechtests-datasets / "
            "$MECHTESTS_DATASETS at a folder that holds the files."
        ) from None


def _fetch_one(entry: ManifestEntry, dest: Path, base_url: str | None, timeout: float) -> None:
    target = dest / entry.path
    if base_url:
        urls: Sequence[str] = [f"{base_url.rstrip('/')}/{quote(entry.path)}"]
    else:
        urls = [u for u in (entry.url, *entry.mirrors) if u]
    errors: list[DatasetError] = []
    for url in urls:
        try:
            _download(entry, url, target, timeout)
            return
        except DatasetError as exc:
            errors.append(exc)
    mismatches = [e for e in errors if isinstance(e, ChecksumMismatch)]
    raise (mismatches or errors)[0]


def refusal_splits_bytes(advbench_csv: Path, alpaca_json: Path) -> bytes:
    """``refusal_splits/du2025_refusal_splits.json`` rebuilt from AdvBench and Alpaca.

    The split is the paper code's (``Refusal/utils.py``: ``train_test_split(test_size=0.2,
    random_state=42)`` per set, ``train[:128]`` for extraction, ``test[:100]`` for evaluation),
    re-implemented by :func:`mechtests.data.refusal.build_paper_splits`. The bytes depend only
    on the two inputs (JSON, one-space indent, UTF-8, final newline).
    """
    from mechtests.data.refusal import build_paper_splits

    splits = build_paper_splits(advbench_csv, alpaca_json)
    body = {
        "description": "The refusal instructions of Du et al. (Refusal/utils.py): AdvBench goals "
                       "(harmful) and Alpaca instructions with an empty input (harmless), each "
                       "split with train_test_split(test_size=0.2, random_state=42); extraction "
                       "uses train[:128], evaluation test[:100].",
        "derived_by": "mechtests datasets fetch, from advbench/harmful_behaviors.csv and "
                      "alpaca/alpaca_no_input.json",
        "harmful_train_128": list(splits.harmful_train),
        "harmless_train_128": list(splits.harmless_train),
        "harmful_test_100": list(splits.harmful_test),
        "harmless_test_100": list(splits.harmless_test),
    }
    return (json.dumps(body, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _build_one(entry: ManifestEntry, dest: Path) -> None:
    data = refusal_splits_bytes(dest / entry.inputs[0], dest / entry.inputs[1])
    got = hashlib.sha256(data).hexdigest()
    if got != entry.sha256:
        raise _mismatch(f"rebuilt {entry.path} (from {', '.join(entry.inputs)})", entry.sha256,
                        got, "the inputs or the split changed (numpy's RandomState(42) "
                        "permutation); report it with `pip list` attached.")
    _write_atomically(dest / entry.path, lambda fh: fh.write(data))


def fetch_datasets(
    dest: Path | None = None,
    *,
    manifest: Sequence[ManifestEntry] | None = None,
    base_url: str | None = None,
    timeout: float = 60.0,
    echo: Callable[[str], object] = print,
    remember: bool = True,
) -> FetchResult:
    """Fetch every manifest file into ``dest`` (default :func:`default_dest`), checked.

    Files already present with the pinned sha256 are kept. ``base_url`` replaces every source
    with ``<base_url>/<relative path>`` (a mirror with this layout). With ``remember`` the
    folder becomes the default ``--mechtests-datasets`` once every file is in place.
    """
    dest = Path(dest) if dest is not None else default_dest()
    entries = tuple(manifest) if manifest is not None else load_manifest()
    dest.mkdir(parents=True, exist_ok=True)
    done: dict[str, list[str]] = {"downloaded": [], "kept": [], "built": []}
    for entry in sorted(entries, key=lambda e: e.build is not None):  # inputs before builds
        target = dest / entry.path
        if target.is_file() and sha256_file(target) == entry.sha256:
            done["kept"].append(entry.path)
            continue
        if entry.build is None:
            _fetch_one(entry, dest, base_url, timeout)
            done["downloaded"].append(entry.path)
            echo(f"downloaded {entry.path} ({entry.size} bytes, sha256 ok)")
        else:
            _build_one(entry, dest)
            done["built"].append(entry.path)
            echo(f"rebuilt {entry.path} ({entry.size} bytes, sha256 ok)")
    marker = {"files": {e.path: e.sha256 for e in entries}}
    payload = json.dumps(marker, indent=1, sort_keys=True).encode()
    _write_atomically(dest / MARKER_NAME, lambda fh: fh.write(payload))
    if remember:
        pointer = json.dumps({"path": str(dest.resolve())}).encode()
        _write_atomically(data_home() / POINTER_NAME, lambda fh: fh.write(pointer))
    return FetchResult(dest, *(tuple(done[k]) for k in ("downloaded", "kept", "built")))


def fetched_datasets_dir() -> Path | None:
    """The folder of the last complete ``mechtests datasets fetch``, if it is still complete."""
    candidates = [default_dest()]
    try:
        recorded = json.loads((data_home() / POINTER_NAME).read_text(encoding="utf-8"))
        candidates.insert(0, Path(recorded["path"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return next((c for c in candidates if (c / MARKER_NAME).is_file()), None)


def add_datasets_subparser(sub: Any) -> None:
    """The ``datasets`` sub-command (``datasets fetch``)."""
    group = sub.add_parser(
        "datasets", help="fetch the paper's datasets",
        description="The paper's datasets (du2025 statements, AdvBench, Alpaca, refusal splits).")
    actions = group.add_subparsers(dest="datasets_command", required=True)
    fetch = actions.add_parser(
        "fetch", help="download the paper's datasets, check their sha256, make them the default",
        description="Download every file of the manifest (the paper's repository and "
                    "andyrdt/refusal_direction at pinned commits), check each against its "
                    "pinned sha256, write it atomically, rebuild the refusal splits with the "
                    "paper code's split, and make the folder the default --mechtests-datasets. "
                    "Files already present with the right sha256 are not downloaded again.")
    fetch.add_argument("--dest", default=None, metavar="DIR",
                       help="folder to write (du2025/, du2025_outputs/, advbench/, alpaca/, "
                            f"refusal_splits/). Default: {default_dest()}.")
    fetch.add_argument("--base-url", default=None, metavar="URL",
                       help="download every file from URL/<relative path> (a mirror with the "
                            "layout of --dest) instead of its pinned source. Default: the "
                            "manifest's sources (GitHub).")
    fetch.add_argument("--manifest", default=None, metavar="FILE",
                       help="manifest of the files (YAML 'files:' list with path, url, "
                            "sha256, size, license). Default: the one shipped with mechtests.")
    fetch.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                       help="network timeout per request. Default: 60.")


def run_datasets(args: argparse.Namespace) -> int:
    """Run ``mechtests datasets fetch``; one line on stderr and exit 1 on an error."""
    try:
        manifest = load_manifest(Path(args.manifest)) if args.manifest else None
        result = fetch_datasets(Path(args.dest) if args.dest else None, manifest=manifest,
                                base_url=args.base_url, timeout=args.timeout)
    except MechTestsError as exc:
        print(f"mechtests datasets fetch: {exc}", file=sys.stderr)
        return 1
    print(f"datasets in {result.dest}: {len(result.downloaded)} downloaded, "
          f"{len(result.kept)} already present, {len(result.built)} rebuilt; it is now the "
          "default --mechtests-datasets (the option and $MECHTESTS_DATASETS still win).")
    return 0
