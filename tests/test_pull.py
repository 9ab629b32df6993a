"""Pull from an untrusted store: every tampered entry refused in one line, nothing left behind.

Each attack starts from a real pushed lineage (prepare, with a file and a directory input, →
train), tampers with a copy of the store or with a fresh clone, pulls, and checks the
refusal's message and that the whole temporary filesystem is as it was (listed before and
after, links not followed), refs included.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import clone, git, isolate, listing, make_repo, make_run, tamper, xp
from xpkit._core._lock import RunLock
from xpkit._core._paths import RunPaths
from xpkit._core._yaml import dump_yaml, load_yaml
from xpkit._record._data import write_manifest
from xpkit._record._hashing import hash_path
from xpkit._share._pull import pull
from xpkit._share._store import hash_file, push
from xpkit.errors import XpkitError


@dataclass(frozen=True)
class Pushed:
    """A lineage pushed from project A (origin ``origin``), made once for the module."""

    origin: Path
    store: Path
    prep: RunLock
    train: RunLock


def _inputs(a: Path) -> tuple[dict[str, Any], dict[str, str] | None]:
    """``data/raw.csv`` and the directory ``data/images`` (gitignored), as run.lock records them."""
    (a / "data" / "images").mkdir(parents=True)
    (a / "data" / "raw.csv").write_text("x,y\n1,2\n")
    (a / "data" / "images" / "a.png").write_bytes(b"A" * 100)
    (a / "data" / "images" / "b.png").write_bytes(b"B" * 50)
    raw, images = hash_path(a / "data" / "raw.csv"), hash_path(a / "data" / "images")
    return {
        "raw": {**raw.to_lock(), "path": "data/raw.csv"},
        "images": {**images.to_lock(), "path": "data/images"},
    }, images.manifest


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    tmp = tmp_path_factory.mktemp("pushed")
    with pytest.MonkeyPatch.context() as mp:
        isolate(mp)
        a, origin = make_repo(tmp)
        (a / ".gitignore").write_text("results/\n__pycache__/\ndata/\n")
        git(a, "commit", "-qam", "ignore data")
        git(a, "push", "-q", "origin", "main")
        mp.chdir(a)
        data, images = _inputs(a)
        prep = make_run(a, "results/prepare/p1", {"out.txt": b"rows\n"}, data=data)
        write_manifest(RunPaths(a / prep.dir), "images", images)
        train = make_run(
            a, "results/train/t1", {"model.bin": b"weights"}, stage="train",
            upstream={"prep": prep.to_dict()},
        )  # fmt: skip
        push([train.id], store=tmp / "store", data=True)
    return Pushed(origin, tmp / "store", prep, train)


@dataclass(frozen=True)
class Ctx:
    """One attack's scene: a copy of the store, a fresh clone, a directory outside both."""

    store: Path
    clone: Path
    elsewhere: Path
    prep: RunLock
    train: RunLock

    def stored(self, run: RunLock) -> Path:
        return self.store / "runs" / run.id


def _retarget(rel: str, *, extra: dict[str, bytes] | None = None) -> Callable[[Ctx], None]:
    """The prepare run's manifest and run.lock both say ``dir: rel`` (resealed, consistent)."""

    def attack(c: Ctx) -> None:
        def change(manifest: dict[str, Any], run_dir: Path) -> None:
            lock = run_dir / "files" / "run.lock"
            lock.write_text(lock.read_text().replace(f"dir: {c.prep.dir}", f"dir: {rel}"))
            for name, data in {"run.lock": None, **(extra or {})}.items():
                if data is not None:
                    (run_dir / "files" / name).write_bytes(data)
                path = run_dir / "files" / name
                manifest["files"][name] = {"size": path.stat().st_size, "hash": hash_file(path)}
            manifest["dir"] = rel

        tamper(c.store, c.prep.id, change)

    return attack


def _deeply_nested_manifest(c: Ctx) -> None:
    """A manifest nested deeper than a parser recurses, resealed."""
    import xxhash

    nested = "[" * 10**5 + "]" * 10**5
    data = f'{{"id": "{c.prep.id}", "files": {{}}, "upstream": {nested}}}'
    (c.stored(c.prep) / "manifest.json").write_text(data)
    digest = xxhash.xxh3_128_hexdigest(data.encode())
    (c.stored(c.prep) / "COMPLETE").write_text(f"xxh3_128:{digest}\n")


def _entry(name: str, entry: dict[str, Any]) -> Callable[[Ctx], None]:
    def attack(c: Ctx) -> None:
        tamper(c.store, c.prep.id, lambda m, _: m["files"].__setitem__(name, entry))

    return attack


def _clone_link(rel: str) -> Callable[[Ctx], None]:
    """A symlink in the clone, ``rel -> elsewhere``."""

    def attack(c: Ctx) -> None:
        (c.clone / rel).parent.mkdir(parents=True, exist_ok=True)
        (c.clone / rel).symlink_to(c.elsewhere, target_is_directory=True)

    return attack


def _both(*attacks: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def attack(c: Ctx) -> None:
        for one in attacks:
            one(c)

    return attack


def _store_link(rel: str) -> Callable[[Ctx], None]:
    """``runs/<prepare>/files/<rel>`` in the store replaced by a symlink pointing elsewhere."""

    def attack(c: Ctx) -> None:
        path = c.stored(c.prep) / "files" / rel
        if path.is_dir():
            shutil.copytree(path, c.elsewhere / "copy")
            shutil.rmtree(path)
            path.symlink_to(c.elsewhere / "copy", target_is_directory=True)
            return
        (c.elsewhere / "secret").write_bytes(path.read_bytes() if path.exists() else b"s")
        path.unlink(missing_ok=True)
        path.symlink_to(c.elsewhere / "secret")

    return attack


def _below_linked_run(c: Ctx) -> None:
    """Train's dir is made to lie in the prepare run, through an unlisted store link there."""
    (c.stored(c.prep) / "files" / "esc").symlink_to(c.elsewhere, target_is_directory=True)
    inner = f"{c.prep.dir}/esc/x"

    def change(manifest: dict[str, Any], run_dir: Path) -> None:
        lock = run_dir / "files" / "run.lock"
        lock.write_text(lock.read_text().replace(f"dir: {c.train.dir}", f"dir: {inner}"))
        manifest["files"]["run.lock"] = {"size": lock.stat().st_size, "hash": hash_file(lock)}
        manifest["dir"] = inner

    tamper(c.store, c.train.id, change)


def _corrupt(rel: str) -> Callable[[Ctx], None]:
    """Flip the bytes of a stored file (same size): only its hash tells."""

    def attack(c: Ctx) -> None:
        path = c.store / rel.format(prep=c.prep.id, raw=_raw_key(c))
        path.write_bytes(bytes(b ^ 1 for b in path.read_bytes()))

    return attack


def _raw_key(c: Ctx) -> str:
    digest = json.loads((c.stored(c.prep) / "manifest.json").read_text())["inputs"]["raw"]["hash"]
    hexdigest = digest.removeprefix("xxh3_128:")
    return f"data/{hexdigest[:2]}/{hexdigest}"


def _corrupt_bundle(c: Ctx) -> None:
    (bundle,) = (c.store / "code").glob("*.bundle")
    _corrupt(f"code/{bundle.name}")(c)


def _remove(pattern: str) -> Callable[[Ctx], None]:
    def attack(c: Ctx) -> None:
        found = list(c.store.glob(pattern.format(prep=c.prep.id)))
        assert found, pattern
        for path in found:
            path.unlink()

    return attack


def _rename_bundle_json(c: Ctx) -> None:
    (json_file,) = (c.store / "code").glob("*.json")
    json_file.rename(c.store / "code" / "...json")


def _input(
    change: Callable[[dict[str, Any]], None], *, lock_too: bool = True
) -> Callable[[Ctx], None]:
    """Change the prepare run's inputs in its manifest (and, consistently, in its run.lock)."""

    def attack(c: Ctx) -> None:
        def both(manifest: dict[str, Any], run_dir: Path) -> None:
            change(manifest["inputs"])
            if not lock_too:
                return
            lock_file = run_dir / "files" / "run.lock"
            lock = load_yaml(lock_file.read_bytes())
            lock["data"] = {
                k: {"path": e["path"], "hash": e["hash"], "files": 1, "bytes": e["bytes"]}
                for k, e in manifest["inputs"].items()
            }
            lock_file.write_text(dump_yaml(lock))
            entry = {"size": lock_file.stat().st_size, "hash": hash_file(lock_file)}
            manifest["files"]["run.lock"] = entry

        tamper(c.store, c.prep.id, both)

    return attack


def _input_path(name: str, path: str) -> Callable[[dict[str, Any]], None]:
    return lambda inputs: inputs[name].__setitem__("path", path)


def _input_file_hash(inputs: dict[str, Any]) -> None:
    inputs["images"]["files"]["a.png"] = inputs["raw"]["hash"]


def _store_object_link(c: Ctx) -> None:
    """The stored raw data replaced by a symlink to a file elsewhere with the same bytes."""
    path = c.store / _raw_key(c)
    (c.elsewhere / "raw").write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(c.elsewhere / "raw")


def _different_local_input(c: Ctx) -> None:
    (c.clone / "data").mkdir()
    (c.clone / "data" / "raw.csv").write_text("mine\n")


ATTACKS: dict[str, tuple[Callable[[Ctx], None], str, dict[str, bool]]] = {
    # where a run directory may go
    "dir-through-a-clone-symlink": (
        _both(_clone_link("ext"), _retarget("ext/x")), r"unsafe run directory 'ext/x'", {}),
    "stage-dir-is-a-clone-symlink": (
        _clone_link("results/prepare"), r"results/prepare is a symlink: refusing to go", {}),
    "results-dir-symlink-below-root": (
        _both(_clone_link("ext"), _retarget("ext/prepare/p1")), r"unsafe run directory", {}),
    "dir-outside-results": (_retarget("lib/x"), r"unsafe run directory 'lib/x'", {}),
    "dir-tests-pwn": (
        _retarget("tests/pwn", extra={"conftest.py": b"import os\n"}),
        r"unsafe run directory 'tests/pwn'", {}),
    "dir-src-pwn": (_retarget("src_pwn/mod"), r"unsafe run directory 'src_pwn/mod'", {}),
    "dir-inside-a-nested-git": (
        _retarget("sub/.git/pwn"), r"unsafe run directory 'sub/.git/pwn'", {}),
    "dir-below-a-file": (_retarget("stage.py/x"), r"unsafe run directory 'stage.py/x'", {}),
    "dir-of-another-stage": (
        _retarget("results/train/p1"), r"unsafe run directory 'results/train/p1'", {}),
    "dir-named-latest": (
        _retarget("results/prepare/latest"), r"unsafe run directory 'results/prepare/latest'", {}),
    "dir-hidden-name": (
        _retarget("results/prepare/.p1"), r"unsafe run directory 'results/prepare/\.p1'", {}),
    "dir-below-a-linked-run": (
        _below_linked_run, r"unsafe run directory 'results/prepare/p1/esc/x'", {}),
    # entries of a stored run
    "manifest-nested-too-deep": (
        _deeply_nested_manifest, r"store manifest of run \w+ is not valid", {}),
    "file-and-a-file-below-it": (
        _entry("out.txt/x", {"size": 1, "hash": "xxh3_128:" + "0" * 32}),
        r"entry 'out.txt/x' lies below the file 'out.txt'", {}),
    "config-yaml-and-below": (
        _both(_entry("config.yaml", {"size": 1, "hash": "xxh3_128:" + "0" * 32}),
              _entry("config.yaml/x", {"size": 1, "hash": "xxh3_128:" + "0" * 32})),
        r"entry 'config.yaml/x' lies below the file 'config.yaml'", {}),
    "link-entry": (_entry("alias", {"link": "out.txt"}), r"unsafe entry 'alias'.*a symlink", {}),
    "store-symlink-listed-file": (
        _store_link("out.txt"), r"files/out\.txt is a symlink: refusing to go through", {}),
    "store-symlink-unlisted-with-link": (
        _store_link("esc"), r"esc in the store's copy of run \w+ is a symlink", {"link": True}),
    "store-files-dir-symlink-with-link": (
        _store_link(""), r"files is a symlink: refusing to go through", {"link": True}),
    "store-files-dir-symlink-copy": (
        _store_link(""), r"files is a symlink: refusing to go through", {}),
    "manifest-file-missing": (
        _remove("runs/{prep}/files/out.txt"), r"out\.txt of run \w+ is missing from store", {}),
    "file-hash-mismatch": (
        _corrupt("runs/{prep}/files/out.txt"), r"out\.txt of run \w+ .*does not match its hash",
        {}),
    # code
    "bundle-json-without-its-bundle": (_remove("code/*.bundle"), r"has no file b-\w+", {}),
    "bundle-json-renamed-code-dotdotdot-json": (
        _rename_bundle_json, r"code bundle b-\w+ of run \w+ is missing from store", {}),
    "bundle-hash-mismatch": (_corrupt_bundle, r"code bundle .* does not match its hash", {}),
    # inputs
    "inputs-not-those-of-the-run-lock": (
        _input(_input_path("raw", "data/other.csv"), lock_too=False),
        r"its inputs are not the data its run.lock recorded", {"data": True}),
    "input-path-dotdot": (
        _input(_input_path("raw", "../outside.csv")), r"unsafe path '\.\./outside\.csv'",
        {"data": True}),
    "input-object-hash-mismatch": (
        _corrupt("{raw}"), r"input data/raw\.csv in store .* does not match its hash",
        {"data": True}),
    "input-dir-files-do-not-make-its-hash": (
        _input(_input_file_hash), r"input 'images' .* do not make the directory hash",
        {"data": True}),
    "input-differs-here": (
        _different_local_input, r"input data/raw\.csv exists here and differs .* --force",
        {"data": True}),
    "input-object-is-a-store-symlink": (
        _store_object_link, r"data/\w+/\w+ is a symlink: refusing to go through", {"data": True}),
    "input-object-is-a-store-symlink-with-link": (
        _store_object_link, r"data/\w+/\w+ is a symlink: refusing to go through",
        {"data": True, "link": True}),
    "input-parent-is-a-clone-symlink": (
        _clone_link("data"), r"data is a symlink: refusing to write through it",
        {"data": True}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ATTACKS))
def test_pull_refuses_a_tampered_store_and_leaves_nothing_behind(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    pushed: Pushed,
    name: str,
) -> None:
    """Each attack is one line naming the entry and the reason; the filesystem is untouched."""
    attack, message, options = ATTACKS[name]
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    shutil.copytree(pushed.store, store, symlinks=True)
    elsewhere.mkdir()
    b = clone(pushed.origin, tmp_path / "B")
    ctx = Ctx(store, b, elsewhere, pushed.prep, pushed.train)
    attack(ctx)
    monkeypatch.chdir(b)
    top = tmp_path_factory.getbasetemp()
    refs = git(b, "for-each-ref")
    before = listing(top, skip=("cache",))  # the hash cache may learn the clone's files
    with pytest.raises(XpkitError, match=message) as refused:
        pull(pushed.train.id, store=store, **options)
    assert "\n" not in str(refused.value)
    assert listing(top, skip=("cache",)) == before
    assert git(b, "for-each-ref") == refs


def test_refusal_is_one_line_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pushed: Pushed
) -> None:
    """xp pull says a refusal in one line on stderr, exit status 2, and writes nothing."""
    store = tmp_path / "store"
    shutil.copytree(pushed.store, store)
    b = clone(pushed.origin, tmp_path / "B")
    ctx = Ctx(store, b, tmp_path, pushed.prep, pushed.train)
    _retarget("tests/pwn", extra={"conftest.py": b"import os\n"})(ctx)
    proc = xp(b, "pull", pushed.train.id[:6], "--store", str(store), check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "unsafe run directory 'tests/pwn'" in proc.stderr
    assert not (b / "tests").exists()
    assert not (b / "results").exists()


def test_copy_pull_ignores_an_unlisted_store_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pushed: Pushed
) -> None:
    """A symlink the manifest does not list is neither copied nor followed by a copying pull."""
    store = tmp_path / "store"
    shutil.copytree(pushed.store, store)
    (tmp_path / "elsewhere").mkdir()
    (store / "runs" / pushed.prep.id / "files" / "esc").symlink_to(tmp_path / "elsewhere")
    b = clone(pushed.origin, tmp_path / "B")
    monkeypatch.chdir(b)
    report = pull(pushed.train.id, store=store)
    assert [r["state"] for r in report.runs] == ["copied", "copied"]
    assert not os.path.lexists(b / pushed.prep.dir / "esc")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_pull_skips_inputs_a_project_keeps_as_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pushed: Pushed
) -> None:
    """Inputs named as code, hooks or environments, outside the project or not ignored by
    git are reported and not written; the rest is restored."""
    store = tmp_path / "store"
    shutil.copytree(pushed.store, store)

    def change(inputs: dict[str, Any]) -> None:
        raw = inputs.pop("raw")
        for i, path in enumerate(
            ["tests/conftest.py", ".git/hooks/post-checkout", ".venv/lib/x.pth",
             "pkg/__pycache__/m.cpython-311.pyc", "/etc/outside.csv", "lib.csv", "data/raw.csv"]
        ):  # fmt: skip
            inputs[f"k{i}"] = {**raw, "path": path}

    _input(change)(Ctx(store, tmp_path, tmp_path, pushed.prep, pushed.train))
    b = clone(pushed.origin, tmp_path / "B")
    monkeypatch.chdir(b)
    report = pull(pushed.train.id, store=store, data=True)
    skipped = dict(line.split(": ", 1) for line in report.skipped_inputs)
    assert skipped == {
        "tests/conftest.py": "a code file",
        ".git/hooks/post-checkout": "in a hidden or code directory",
        ".venv/lib/x.pth": "in a hidden or code directory",
        "pkg/__pycache__/m.cpython-311.pyc": "in a hidden or code directory",
        "/etc/outside.csv": "outside the project",
        "lib.csv": "not ignored by git (part of the code)",
    }
    for path in ("tests", ".venv", "pkg", "lib.csv", ".git/hooks/post-checkout"):
        assert not (b / path).exists(), path
    assert (b / "data" / "raw.csv").read_text() == "x,y\n1,2\n"
    assert hash_path(b / "data" / "images").hash == pushed.prep.data["images"]["hash"]
