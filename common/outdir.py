"""The one write discipline for output folders: build into a hidden sibling, swap into place when complete.

Every command that writes a folder (build, filter, report, release, export, schema export) goes through
:func:`output_folder`. The rules it holds:

- the work happens in ``.NAME.partial`` beside the final folder; the final name only ever holds a complete output
  (the previous one until the new one is finished, then the new one, swapped in one ``renameat2`` exchange);
- a complete output carries a marker file (``.forma-output.json``) naming its kind; an existing folder that is not
  a Forma output of the same kind (a user's own folder, a dataset where a report should go) is refused;
- an existing output of the same kind is replaced as a whole only when the caller passes ``overwrite`` (the CLI's
  ``--overwrite``), never mixed with the new files;
- an input inside the output folder (``forma filter DIR/samples.jsonl --out DIR``) is refused before any work;
- a killed run leaves only the hidden ``.NAME.partial``; the next run clears it (keeping the paths it is told to
  keep, such as a build's LLM reply cache) and a lock refuses two writers at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from common import __version__
from common.errors import FormaError

MARKER = ".forma-output.json"
LOCK = ".forma-lock"

#: Files that identify an output written before the marker existed, by kind.
LEGACY_SIGNATURES: dict[str, tuple[str, ...]] = {
    "dataset": ("manifest.json", "samples.jsonl"),
    "filtered": ("manifest.json", "samples.jsonl"),
    "report": ("report.json", "report.html"),
    "release": ("manifest.json", "SHA256SUMS"),
    "gguf": ("Modelfile", "verification.json"),
}


def partial_path(final: Path) -> Path:
    """Where an output is assembled before it takes its final name."""
    return final.with_name(f".{final.name}.partial")


def _old_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def kind_of(folder: Path) -> str | None:
    """The kind of Forma output ``folder`` holds (from its marker, else its legacy files), or None."""
    marker = folder / MARKER
    if marker.is_file():
        try:
            return str(json.loads(marker.read_text(encoding="utf-8"))["kind"])
        except (ValueError, KeyError, TypeError):
            return None
    for kind, files in LEGACY_SIGNATURES.items():
        if all((folder / name).is_file() for name in files):
            return kind
    return None


def refuse_input_inside(final: Path, inputs: Sequence[Path | None]) -> None:
    """An input that is the output, or lies inside it, would be destroyed by the swap: refuse it up front."""
    target = final.resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if source == target or target in source.parents:
            raise FormaError("the output would replace an input", path=final, where=f"input {item}",
                             hint="write to another folder")


def refuse_same_file(source: Path, out: Path) -> None:
    """For commands that write one file: the output may not be the input (it would be emptied before it is read)."""
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise FormaError("the output file is the input file", path=out, hint="write to another file")


def check_target(final: Path, kind: str, *, overwrite: bool) -> None:
    """Refuse what may not be replaced: a file, a folder that is not this kind of output, or one without overwrite."""
    _recover(final)
    if not final.exists():
        return
    if not final.is_dir():
        raise FormaError("the output path is a file, not a folder", path=final, hint="choose a folder")
    if not any(p.name != MARKER for p in final.iterdir()):
        return
    found = kind_of(final)
    if found is None:
        raise FormaError(f"the output folder is not empty and is not a Forma {kind} output; refusing to touch it",
                         path=final, hint="choose a new or empty folder")
    if found != kind:
        raise FormaError(f"the output folder holds a Forma {found} output, not a {kind}", path=final,
                         hint="choose another folder")
    if not overwrite:
        raise FormaError(f"the output folder already holds a {kind} from an earlier run", path=final,
                         hint="pass --overwrite to replace it as a whole, or choose a new folder")


def _recover(final: Path) -> None:
    """A swap killed between its two renames (only without renameat2) left the previous output aside: restore it."""
    old = _old_path(final)
    if old.is_dir() and not final.exists():
        old.rename(final)
    elif old.is_dir():
        shutil.rmtree(old, ignore_errors=True)


def _lock(work: Path) -> IO[bytes]:
    handle = (work / LOCK).open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise FormaError("another forma command is writing this output now", path=work.parent / work.name[1:-8],
                         hint="wait for it to finish") from None
    return handle


def _clear(work: Path, keep: Sequence[str]) -> None:
    """Empty ``work`` except the lock and the ``keep`` paths (a killed run's reusable state)."""
    for child in work.iterdir():
        if child.name in keep or child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _prepare(final: Path, keep: Sequence[str], carry: bool) -> tuple[Path, IO[bytes]]:
    work = partial_path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir(exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in final.parents if p.exists()), None)
        why = f"{blocker} is a file, not a folder" if blocker and not blocker.is_dir() else exc.strerror or exc
        raise FormaError(f"cannot create the output folder: {why}", path=final) from None
    handle = _lock(work)
    _clear(work, keep)
    for name in keep if carry else ():
        if (final / name).exists() and not (work / name).exists():
            if (final / name).is_dir():
                shutil.copytree(final / name, work / name)
            else:
                shutil.copy2(final / name, work / name)
    return work, handle


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the call is missing."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        errno = ctypes.get_errno()
        if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: a filesystem without the flag
            return False
        raise OSError(errno, os.strerror(errno), str(b))
    return True


def _commit(work: Path, final: Path, kind: str) -> None:
    (work / MARKER).write_text(json.dumps({"kind": kind, "forma": __version__}) + "\n", encoding="utf-8")
    with contextlib.suppress(FileNotFoundError):
        (work / LOCK).unlink()
    if final.exists() and not _exchange(work, final):
        final.rename(_old_path(final))
        work.rename(final)
    elif not final.exists():
        work.rename(final)
    # after an exchange ``work`` holds the previous output; without one it is ``.NAME.old``
    for leftover in (work, _old_path(final)):
        shutil.rmtree(leftover, ignore_errors=True)


def _abandon(work: Path, keep: Sequence[str]) -> None:
    """A failed or interrupted run: drop what it wrote, keep the reusable state, never touch the final folder."""
    with contextlib.suppress(OSError):
        _clear(work, keep)
        if not any(p.name != LOCK for p in work.iterdir()):
            shutil.rmtree(work)


@contextlib.contextmanager
def output_folder(final: Path, kind: str, *, overwrite: bool = False, inputs: Sequence[Path | None] = (),
                  keep: Sequence[str] = (), carry: bool = False) -> Iterator[Path]:
    """Yield the folder to write ``final``'s content into; on success it becomes ``final`` in one swap.

    ``keep`` names top-level paths of the work folder that survive a failed run (and a killed one) for the next run
    to reuse; with ``carry`` they are also copied from an existing ``final`` (``forma build --resume``). An error
    while writing (disk full, read-only) becomes a FormaError naming the file.
    """
    final = Path(final)
    refuse_input_inside(final, inputs)
    check_target(final, kind, overwrite=overwrite)
    work, handle = _prepare(final, keep, carry)
    try:
        yield work
        _commit(work, final, kind)
    except OSError as exc:
        _abandon(work, keep)
        raise FormaError(f"{exc.strerror or exc}; nothing was replaced", path=exc.filename or final) from None
    except BaseException:
        _abandon(work, keep)
        raise
    finally:
        handle.close()
