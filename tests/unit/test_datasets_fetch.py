"""``mechtests datasets fetch``: downloads checked by sha256, atomic writes, the default folder.

A loopback HTTP server (127.0.0.1, a free port, one thread) serves small files written by the
tests with a test manifest; nothing leaves the machine. The shipped manifest is checked against
the reference copies of the paper's data when they sit beside the project (``../shared``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from mechtests.cli import main
from mechtests.data import fetch
from mechtests.data.fetch import (
    ChecksumMismatch,
    ManifestEntry,
    fetch_datasets,
    fetched_datasets_dir,
    load_manifest,
    refusal_splits_bytes,
)
from mechtests.data.refusal import SPLITS_FILE, build_paper_splits, read_splits_json
from mechtests.data.sources import DATASETS_ENV, dataset_source
from mechtests.errors import ConfigError, DatasetError
from mechtests.families import load_families

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
TIMEOUT = 5.0
CUT_PREFIX = "/cut/"  # the server announces the whole file, sends 10 bytes and hangs up


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.startswith(CUT_PREFIX):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"statement,")
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class Server:
    """Files under ``root`` at ``url``; ``requests`` lists the paths asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        handler = type("Handler", (_Handler,), {"requests": self.requests})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def files(self) -> list[str]:
        return [p for p in self.requests if not p.startswith(CUT_PREFIX)]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _entry(root: Path, rel: str, url: str) -> ManifestEntry:
    data = (root / rel).read_bytes()
    return ManifestEntry(path=rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                         license="test data", url=url)


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the real user data dir or sees a real $MECHTESTS_DATASETS."""
    monkeypatch.setattr(fetch, "data_home", lambda: tmp_path / "user-data")
    monkeypatch.delenv(DATASETS_ENV, raising=False)


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A small copy of the paper's layout: one statements CSV, AdvBench and Alpaca."""
    root = tmp_path / "served"
    _write(root / "du2025/cities.csv", "statement,label\nThe city of Paris is in France.,1\n"
                                       "The city of Paris is in Peru.,0\n")
    goals = "".join(f'Harmful request {i},"Sure, here is {i}"\n' for i in range(12))
    _write(root / "advbench/harmful_behaviors.csv", "goal,target\n" + goals)
    rows = [{"instruction": f"Harmless request {i}", "category": None} for i in range(15)]
    _write(root / "alpaca/alpaca_no_input.json", json.dumps(rows, indent=4))
    return root


@pytest.fixture
def server(served: Path) -> Iterator[Server]:
    srv = Server(served)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=TIMEOUT)


@pytest.fixture
def manifest(served: Path, server: Server) -> tuple[ManifestEntry, ...]:
    files = ("du2025/cities.csv", "advbench/harmful_behaviors.csv", "alpaca/alpaca_no_input.json")
    splits = refusal_splits_bytes(served / files[1], served / files[2])
    built = ManifestEntry(path=SPLITS_FILE, sha256=hashlib.sha256(splits).hexdigest(),
                          size=len(splits), license="derived", build="refusal_splits",
                          inputs=files[1:])
    return (built, *(_entry(served, rel, f"{server.url}/{rel}") for rel in files))


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.part"))


def test_a_fetch_lands_every_file_with_the_served_bytes(
        tmp_path: Path, served: Path, manifest: tuple[ManifestEntry, ...]) -> None:
    dest = tmp_path / "data"
    result = fetch_datasets(dest, manifest=manifest, timeout=TIMEOUT, echo=lambda _: None)
    for rel in ("du2025/cities.csv", "advbench/harmful_behaviors.csv",
                "alpaca/alpaca_no_input.json"):
        assert (dest / rel).read_bytes() == (served / rel).read_bytes()
    assert read_splits_json(dest / SPLITS_FILE) == build_paper_splits(
        served / "advbench/harmful_behaviors.csv", served / "alpaca/alpaca_no_input.json")
    assert (len(result.downloaded), len(result.kept), result.built) == (3, 0, (SPLITS_FILE,))
    assert _leftovers(dest) == []


def test_a_second_fetch_downloads_nothing(
        tmp_path: Path, server: Server, manifest: tuple[ManifestEntry, ...]) -> None:
    dest = tmp_path / "data"
    fetch_datasets(dest, manifest=manifest, timeout=TIMEOUT, echo=lambda _: None)
    assert len(server.files()) == 3
    again = fetch_datasets(dest, manifest=manifest, timeout=TIMEOUT, echo=lambda _: None)
    assert len(server.files()) == 3
    assert (again.downloaded, again.built, len(again.kept)) == ((), (), 4)


def test_a_local_file_with_the_wrong_bytes_is_downloaded_again(
        tmp_path: Path, served: Path, manifest: tuple[ManifestEntry, ...]) -> None:
    dest = tmp_path / "data"
    _write(dest / "du2025/cities.csv", "statement,label\nedited,1\n")
    result = fetch_datasets(dest, manifest=manifest, timeout=TIMEOUT, echo=lambda _: None)
    assert "du2025/cities.csv" in result.downloaded
    assert (dest / "du2025/cities.csv").read_bytes() == (served / "du2025/cities.csv").read_bytes()


def test_a_corrupted_file_on_the_server_gives_a_one_line_sha_error_and_leaves_no_file(
        tmp_path: Path, served: Path, manifest: tuple[ManifestEntry, ...]) -> None:
    pinned = next(e for e in manifest if e.path == "du2025/cities.csv").sha256
    _write(served / "du2025/cities.csv", "statement,label\nThe city of Paris is in Peru.,1\n")
    got = hashlib.sha256((served / "du2025/cities.csv").read_bytes()).hexdigest()
    dest = tmp_path / "data"
    with pytest.raises(ChecksumMismatch) as info:
        fetch_datasets(dest, manifest=manifest, timeout=TIMEOUT, echo=lambda _: None)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(rf"du2025/cities\.csv.*expected {pinned}, got {got}\. Fix: ", message)
    assert not (dest / "du2025/cities.csv").exists()
    assert _leftovers(dest) == []
    assert fetched_datasets_dir() is None  # an incomplete folder never becomes the default


def test_an_interrupted_download_leaves_no_partial_file(
        tmp_path: Path, server: Server, manifest: tuple[ManifestEntry, ...]) -> None:
    cut = tuple(replace(e, url=f"{server.url}{CUT_PREFIX}{e.path}")
                if e.path == "du2025/cities.csv" else e for e in manifest)
    dest = tmp_path / "data"
    with pytest.raises(DatasetError, match=r"could not be downloaded .* Fix: ") as info:
        fetch_datasets(dest, manifest=cut, timeout=TIMEOUT, echo=lambda _: None)
    assert "\n" not in str(info.value)
    assert any(p.startswith(CUT_PREFIX) for p in server.requests)
    assert not (dest / "du2025/cities.csv").exists()
    assert _leftovers(dest) == []


def test_a_mirror_is_tried_when_the_source_is_missing(
        tmp_path: Path, server: Server, manifest: tuple[ManifestEntry, ...]) -> None:
    moved = tuple(replace(e, url=f"{server.url}/gone/{e.path}", mirrors=(e.url or "",))
                  if e.url else e for e in manifest)
    dest = tmp_path / "data"
    result = fetch_datasets(dest, manifest=moved, timeout=TIMEOUT, echo=lambda _: None)
    assert len(result.downloaded) == 3
    assert sum(p.startswith("/gone/") for p in server.requests) == 3


def test_a_rebuilt_split_with_another_sha_is_an_error_and_not_written(
        tmp_path: Path, manifest: tuple[ManifestEntry, ...]) -> None:
    wrong = tuple(replace(e, sha256="0" * 64) if e.build else e for e in manifest)
    dest = tmp_path / "data"
    with pytest.raises(ChecksumMismatch, match=rf"rebuilt {SPLITS_FILE}.*expected 0{{64}}"):
        fetch_datasets(dest, manifest=wrong, timeout=TIMEOUT, echo=lambda _: None)
    assert not (dest / SPLITS_FILE).exists()


def test_the_fetched_folder_becomes_the_default_and_explicit_options_still_win(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        manifest: tuple[ManifestEntry, ...]) -> None:
    assert dataset_source("paper", None).root is None
    dest = tmp_path / "data"
    fetch_datasets(dest, manifest=manifest, timeout=TIMEOUT, echo=lambda _: None)
    source = dataset_source("paper", None)
    assert source.root == dest.resolve()
    assert source.statements_csv("cities").read_text().startswith("statement,label")
    explicit = tmp_path / "mine"
    explicit.mkdir()
    assert dataset_source("paper", explicit).root == explicit
    monkeypatch.setenv(DATASETS_ENV, str(explicit))
    assert dataset_source("paper", None).root == explicit


def test_the_cli_fetches_from_a_base_url_and_fails_in_one_line(
        tmp_path: Path, server: Server, served: Path, manifest: tuple[ManifestEntry, ...],
        capsys: pytest.CaptureFixture[str]) -> None:
    listed = [{"path": e.path, "url": "https://unreachable.invalid/" + e.path, "sha256": e.sha256,
               "size": e.size, "license": e.license} if e.url else
              {"path": e.path, "build": e.build, "inputs": list(e.inputs), "sha256": e.sha256,
               "size": e.size, "license": e.license} for e in manifest]
    manifest_file = _write(tmp_path / "manifest.yaml", yaml.safe_dump({"files": listed}))
    dest = tmp_path / "data"
    args = ["datasets", "fetch", "--dest", str(dest), "--manifest", str(manifest_file),
            "--base-url", server.url, "--timeout", str(TIMEOUT)]
    assert main(args) == 0
    assert "3 downloaded, 0 already present, 1 rebuilt" in capsys.readouterr().out
    assert (dest / "du2025/cities.csv").read_bytes() == (served / "du2025/cities.csv").read_bytes()
    _write(served / "advbench/harmful_behaviors.csv", "goal,target\nchanged,x\n")
    (dest / "advbench/harmful_behaviors.csv").unlink()
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "advbench/harmful_behaviors.csv" in err
    assert "sha256 mismatch" in err


def test_a_manifest_entry_without_a_valid_sha256_is_a_config_error(tmp_path: Path) -> None:
    bad = _write(tmp_path / "m.yaml", yaml.safe_dump({"files": [
        {"path": "du2025/cities.csv", "url": "https://x.invalid/c", "sha256": "abc",
         "size": 1, "license": "MIT"}]}))
    with pytest.raises(ConfigError, match=r"du2025/cities\.csv.*sha256 'abc'.*Fix: "):
        load_manifest(bad)


def test_the_shipped_manifest_pins_every_file_the_suite_reads() -> None:
    entries = {e.path: e for e in load_manifest()}
    statements = set()
    for family in load_families(None).values():
        if family.datasets == "paper":
            statements.update(family.truth.train_datasets, [family.truth.heldout_dataset],
                              family.knowledge.datasets)
    assert statements, "no family reads the paper's datasets"
    needed = {f"du2025/{name}.csv" for name in statements} | {
        SPLITS_FILE, "advbench/harmful_behaviors.csv", "alpaca/alpaca_no_input.json",
        "du2025/few_shot_samples.json"}
    assert needed <= set(entries)
    pinned_commit = re.compile(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/[0-9a-f]{40}/")
    for entry in entries.values():
        assert entry.license, entry.path
        assert entry.size > 0, entry.path
        assert entry.build or pinned_commit.match(entry.url or ""), entry.path


@pytest.mark.paper_data
def test_the_shipped_manifest_matches_the_reference_copies_of_the_paper_data(
        tmp_path: Path) -> None:
    for entry in load_manifest():
        if entry.build:
            data = refusal_splits_bytes(SHARED / entry.inputs[0], SHARED / entry.inputs[1])
            rebuilt = _write(tmp_path / "splits.json", data.decode("utf-8"))
            assert read_splits_json(rebuilt) == read_splits_json(SHARED / entry.path)
        else:
            data = (SHARED / entry.path).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (entry.sha256, entry.size), \
            entry.path


class _InterruptedResponse:
    """A response whose transfer is stopped by Ctrl-C after the first block."""

    def __init__(self) -> None:
        self.blocks = 0
        self.headers: dict[str, str] = {}

    def __enter__(self) -> _InterruptedResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self, size: int) -> bytes:
        self.blocks += 1
        if self.blocks > 1:
            raise KeyboardInterrupt
        return b"statement,label\n"


def test_a_download_stopped_by_ctrl_c_leaves_no_partial_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        manifest: tuple[ManifestEntry, ...]) -> None:
    monkeypatch.setattr(fetch.urllib.request, "urlopen",
                        lambda url, timeout: _InterruptedResponse())
    dest = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        fetch_datasets(dest, manifest=manifest, timeout=TIMEOUT, echo=lambda _: None)
    assert [p for p in dest.rglob("*") if p.is_file()] == []
