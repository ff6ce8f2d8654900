"""Atomic file writes and content fingerprints.

Every file distillir writes goes through `atomic_write` (write to a temporary sibling, fsync, rename),
so a killed process never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from distillir.errors import InputError


def _temp_prefix(name: str) -> str:
    # The writer's pid in the name lets a later run tell an abandoned temporary from one being written.
    return f".{name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove what a killed writer of `path` left beside it: `.NAME.PID.*.tmp` files and directories whose
    process is gone, and `.NAME.old` once NAME exists. Returns what was removed."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    removed = []
    for child in parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        pid = child.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            removed.append(child)
    old = parent / f".{path.name}.old"
    if old.exists() and path.exists():
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        removed.append(old)
    return removed


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def clean_stale_temporaries_in(directory: str | Path) -> list[Path]:
    """`clean_stale_temporaries` for every output a killed writer left a temporary of in `directory` (a
    checkpoints folder, a run directory): what a resumed run removes before it writes anything."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = {m.group("name") for c in directory.iterdir() if (m := _TEMP_NAME.match(c.name))}
    return [p for name in sorted(names) for p in clean_stale_temporaries(directory / name)]


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success rename it over `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise InputError(path, "is a directory; give a file name")
    clean_stale_temporaries(path)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, owned: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Build a directory under a temporary name; on success swap it into place. An existing `path` is
    replaced only if it is a directory that is empty or, with `owned`, one `owned(path)` recognises as this
    tool's (an index with its manifest, a saved model); anything else raises InputError before any work."""
    path = Path(path)
    check_replaceable_dir(path, owned)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable_dir(path: Path, owned: Callable[[Path], bool] | None = None) -> None:
    """Refuse a target directory that would destroy a user's files: an existing plain file, a path below
    one, or (with `owned`) a non-empty directory this tool did not write."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"is below {parent}, which is a file"
            raise InputError(path, f"{where}; refusing to replace it with a directory")
        if parent.exists():
            break
    if owned is not None and path.is_dir() and any(path.iterdir()) and not owned(path):
        raise InputError(path, "holds files distillir did not write; refusing to replace them (choose another "
                               "output directory)")


# ------------------------------------------------------------------------------------------ checksums

DIGEST_CHUNK = 1 << 20


def file_digests(directory: str | Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", "sha256"}} of every file under `directory` (sorted), for a manifest."""
    directory = Path(directory)
    out = {}
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = f.relative_to(directory).as_posix()
        if rel not in skip:
            out[rel] = file_digest(f)
    return out


def file_digest(path: str | Path) -> dict[str, Any]:
    """{"bytes", "sha256"} of one file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(DIGEST_CHUNK):
            h.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": h.hexdigest()}


def verify_digests(directory: str | Path, digests: dict[str, dict[str, Any]], what: str = "index") -> None:
    """Raise InputError naming the first file of `directory` missing, resized or changed since `digests`."""
    directory = Path(directory)
    for rel, want in digests.items():
        f = directory / rel
        if not f.is_file():
            raise InputError(f, f"missing from the {what} (its manifest lists it); rebuild the {what}")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise InputError(f, f"corrupt or truncated: {size} bytes, the {what}'s manifest records "
                                f"{want['bytes']}; rebuild the {what}")
    for rel, want in digests.items():
        if file_digest(directory / rel)["sha256"] != want["sha256"]:
            raise InputError(directory / rel, f"corrupt: its checksum differs from the one the {what}'s manifest "
                                              f"records; rebuild the {what}")


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one line (logs). A line is written in one call, so a kill loses at most that line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def fingerprint_strings(parts: Iterable[str]) -> str:
    """A short, order-sensitive sha256 over a sequence of strings."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def fingerprint_files(paths: Iterable[str | Path], chunk: int = 1 << 20) -> str:
    """sha256 over files' names and bytes (for model weights and configs)."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where corpus embeddings, BM25 indexes and downloads are cached ($DISTILLIR_CACHE)."""
    root = os.environ.get("DISTILLIR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "distillir"
    )
    return Path(root)


def iter_jsonl_objects(path: str | Path, what: str = "file") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; a missing file, bad JSON or a
    non-object line raises InputError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=lineno) from None
            if not isinstance(row, dict):
                raise InputError(path, f"expected a JSON object per line, got {type(row).__name__}", line=lineno)
            yield lineno, row
