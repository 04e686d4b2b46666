"""The one rule every writer of the tools follows, so that nothing a user owns is lost.

    with Outputs(inputs=[video]) as outputs:          # checks and stages; nothing is replaced yet
        results = outputs.file("out.json")            # a temporary file beside out.json
        overlay = outputs.file("ov.mp4", what="--overlay", suffixes=OVERLAY_SUFFIXES)
        ... the work, writing into `results` and `overlay` ...
    # here both are renamed into place together; after an error, Ctrl-C or SIGTERM neither is, and the
    # temporary files are gone

- Every output path is checked when it is added, before any work: its folder can be written, it is not
  a folder where a file is expected, its name fits the file system, its suffix is one the writer knows.
- No output may be, or contain, an input (symlinks resolved), and no two outputs may be the same path:
  writing `--output precious.mp4` over the video being read, or replacing a folder that holds the
  checkpoint being converted, is refused with one line.
- All outputs of one command are committed at the end, together; a failure leaves the old files as they were.
- JSON goes through `dumps_json`, which refuses NaN and infinity (invalid JSON) with the path of the number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

OVERLAY_SUFFIXES = (".gif", ".mp4", ".mkv", ".mov", ".avi")
_TEMPORARY_MARK = ".vistr-tmp"


class UsageError(ValueError):
    """An option value or output path that cannot work; the command stops before any work (exit code 2)."""


class NonFiniteError(ValueError):
    """A NaN or infinity where a number is to be written: JSON cannot hold it (the results would be unreadable)."""


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path)).resolve()  # absolute first, so `.` and `..` never stay in the name


def _overlap(a: Path, b: Path) -> bool:
    """Whether one path is the other or lies inside it."""
    return a == b or a in b.parents or b in a.parents


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _existing_ancestor(path: Path) -> Path:
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    return folder


def _temporary_name(final: Path, limit: int) -> tuple[str, str]:
    """(prefix, suffix) for mkstemp/mkdtemp: hidden, marked, keeping the suffix writers pick formats by,
    and short enough for any legal target name (mkstemp adds 8 random characters)."""
    suffix = _TEMPORARY_MARK + final.suffix
    room = limit - len(suffix.encode()) - 8 - 2
    stem = final.stem.encode()[: max(room, 1)].decode(errors="ignore")
    return f".{stem}.", suffix


def _make_ordinary(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp make private entries; the committed ones get the permissions of any new file."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


def _raise_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so every `finally` removes its temporary files


class Outputs:
    """All outputs of one command: checked when added, staged beside their targets, committed together.

    Use it as a context manager: leaving the block normally commits, leaving it by an exception (SIGTERM
    included, which it turns into SystemExit while the block runs) removes every temporary file.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike | None] = ()):
        self.inputs = [_resolved(path) for path in inputs if path is not None]
        self._staged: list[tuple[Path, Path, str]] = []  # (temporary, target, "file" | "folder")
        self._created: list[Path] = []  # folders made for targets, removed again if nothing is committed
        self._previous_handler = None

    # ------------------------------------------------------------------------------------------- checks

    def _check(self, path: str | os.PathLike, what: str) -> Path:
        """The resolved target, after the checks every output shares; raises UsageError."""
        if str(path).strip() == "":
            raise UsageError(f"{what} is empty; give a file name")
        target = _resolved(path)
        for source in self.inputs:
            if _overlap(target, source):
                kind = "is" if target == source else ("contains" if target in source.parents else "is inside")
                raise UsageError(f"{what} {path} {kind} the input {source}; choose an output path apart from the inputs")
        for _, staged, _ in self._staged:
            if _overlap(target, staged):
                raise UsageError(f"{what} {path} collides with another output of this command ({staged}); give distinct paths")
        folder = _existing_ancestor(target)
        if not folder.is_dir():
            raise UsageError(f"{what} {path}: {folder} is a file, not a folder; choose another path")
        if len(target.name.encode()) > _name_max(folder):
            raise UsageError(f"{what} {path}: the name is {len(target.name.encode())} bytes, longer than the file "
                             f"system allows ({_name_max(folder)}); choose a shorter name")  # fmt: skip
        return target

    def _parent(self, target: Path, what: str, path) -> None:
        """Create the target's missing folders (remembered, to be removed again if nothing is committed)."""
        missing = [folder for folder in [target.parent, *target.parent.parents] if not folder.exists()]
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self._created.append(folder)
        except OSError as error:
            raise UsageError(f"{what} {path}: cannot create {folder} ({error.strerror}); choose a folder you can write to")

    def _stage(self, target: Path, what: str, path, kind: str) -> Path:
        self._parent(target, what, path)
        prefix, suffix = _temporary_name(target, _name_max(target.parent))
        try:
            if kind == "file":
                handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
                os.close(handle)
            else:
                name = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=target.parent)
        except OSError as error:
            raise UsageError(f"{what} {path}: cannot write in {target.parent} ({error.strerror}); "
                             "choose a folder you can write to") from None  # fmt: skip
        self._staged.append((Path(name), target, kind))
        return Path(name)

    # ------------------------------------------------------------------------------------------- adding

    def check_file(self, path: str | os.PathLike, what: str = "--output", suffixes: Iterable[str] | None = None) -> Path:
        """Check `path` as a file output without writing anything (safe on every process of a distributed job)."""
        target = self._check(path, what)
        if target.is_dir():
            raise UsageError(f"{what} {path} is a folder; give a file name inside it")
        if suffixes is not None and target.suffix.lower() not in suffixes:
            raise UsageError(f"{what} {path}: unknown format {target.suffix or '(no suffix)'!r}; use one of "
                             f"{', '.join(suffixes)}")  # fmt: skip
        folder = _existing_ancestor(target)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{what} {path}: cannot write in {folder} (permission denied); choose a folder you can write to")
        return target

    def file(self, path: str | os.PathLike, what: str = "--output", suffixes: Iterable[str] | None = None) -> Path:
        """Check `path` as a file output and return the temporary file to write instead (renamed at commit)."""
        return self._stage(self.check_file(path, what, suffixes), what, path, "file")

    def folder(self, path: str | os.PathLike, what: str = "--output", replace_if: str | None = None,
               if_not_empty: str = "choose a new folder") -> Path:
        """Check `path` as a folder output and return the empty folder to fill instead (swapped in at commit).

        An existing non-empty folder is replaced only when `replace_if` names a file it holds (a folder of
        the kind this command writes, e.g. a model folder's config.json); anything else is refused, never
        deleted, with `if_not_empty` as the advice.
        """
        return self._stage(self.check_folder(path, what, replace_if, if_not_empty), what, path, "folder")

    def check_folder(self, path: str | os.PathLike, what: str = "--output", replace_if: str | None = None,
                     if_not_empty: str = "choose a new folder") -> Path:
        """The checks of `folder`, writing nothing (safe on every process of a distributed job)."""
        target = self._check(path, what)
        if target.exists() and not target.is_dir():
            raise UsageError(f"{what} {path} is a file, not a folder; choose another path")
        if target == _resolved(os.getcwd()) or target in _resolved(os.getcwd()).parents or target == Path.home():
            raise UsageError(f"{what} {path} is the current folder or above it; give a new folder to write")
        if target.is_dir() and any(target.iterdir()):
            if replace_if is None:
                raise UsageError(f"{what} {path} already exists and is not empty; {if_not_empty}")
            if not (target / replace_if).is_file():
                raise UsageError(f"{what} {path} is not empty and holds no {replace_if}, so it is not one this "
                                 "command wrote; it is never replaced: choose a new folder")  # fmt: skip
        folder = _existing_ancestor(target.parent)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{what} {path}: cannot write in {folder} (permission denied); choose a folder you can write to")
        return target

    # ------------------------------------------------------------------------------------------- finishing

    def commit(self) -> None:
        """Rename every staged output into place (a replaced folder is deleted only after the swap)."""
        for temporary, target, kind in self._staged:
            if kind == "file":
                _make_ordinary(temporary, 0o666)
                os.replace(temporary, target)
            else:
                _make_ordinary(temporary, 0o777)
                replace_folder(temporary, target)
        self._staged.clear()
        self._created.clear()

    def discard(self) -> None:
        """Remove every temporary file and folder, and the folders made for them."""
        for temporary, _, kind in self._staged:
            if kind == "file":
                temporary.unlink(missing_ok=True)
            else:
                shutil.rmtree(temporary, ignore_errors=True)
        self._staged.clear()
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break  # something else was put there meanwhile: it stays
        self._created.clear()

    def __enter__(self) -> Outputs:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, _raise_on_sigterm)
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            if error_type is None:
                self.commit()
        finally:
            self.discard()
            if self._previous_handler is not None:
                signal.signal(signal.SIGTERM, self._previous_handler)


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder `new` at `target`; an old `target` is moved aside first and deleted last."""
    if not target.exists():
        os.replace(new, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name[:100]}.", suffix=".old" + _TEMPORARY_MARK, dir=target.parent))
    os.replace(target, retired / target.name)
    os.replace(new, target)
    shutil.rmtree(retired)


@contextmanager
def atomic_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), what: str = "output") -> Iterator[Path]:
    """One output on its own: a temporary path beside `path`, renamed to `path` only if the block succeeds."""
    with Outputs(inputs) as outputs:
        yield outputs.file(path, what=what)


# ------------------------------------------------------------------------------------------------- option values


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (a stride, a count, a side); 0 and negatives are refused."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of at least 0 (a number of steps that may be none)."""
    return _whole_number(text, 0)


def _fraction(text: str, open_interval: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    inside = 0.0 < value < 1.0 if open_interval else 0.0 <= value <= 1.0  # False for NaN
    if not inside:
        bounds = "strictly between 0 and 1" if open_interval else "between 0 and 1"
        raise argparse.ArgumentTypeError(f"must be {bounds}, not {text}")
    return value


def probability(text: str) -> float:
    """argparse type: a score threshold in [0, 1]."""
    return _fraction(text, open_interval=False)


def open_probability(text: str) -> float:
    """argparse type: a mask threshold in (0, 1); at 0 every pixel is in the mask, at 1 none is."""
    return _fraction(text, open_interval=True)


# ------------------------------------------------------------------------------------------------- JSON


def first_non_finite(data: Any, where: str = "") -> tuple[str, float] | None:
    """(where, value) of the first NaN or infinity in nested dicts and lists, or None."""
    if isinstance(data, float):
        return None if math.isfinite(data) else (where or "the value", data)
    items = data.items() if isinstance(data, Mapping) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = first_non_finite(value, f"{where}[{key!r}]" if isinstance(key, str) else f"{where}[{key}]")
        if found is not None:
            return found
    return None


def finite_or_none(data: Any) -> Any:
    """`data` with every NaN or infinity replaced by None (JSON null), for records where a non-finite
    number is a fact to keep (a diverged training loss) rather than an error."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {key: finite_or_none(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_none(value) for value in data]
    return data


def dumps_json(data: Any, what: str, fix: str) -> str:
    """`json.dumps(data, allow_nan=False)`, refusing non-finite numbers with one line: `what` names the
    file, the message points at the number, `fix` says what to do."""
    found = first_non_finite(data)
    if found is not None:
        raise NonFiniteError(f"{what}: {found[0]} is {found[1]}, which JSON cannot hold; {fix}")
    return json.dumps(data, allow_nan=False)


__all__ = ["OVERLAY_SUFFIXES", "NonFiniteError", "Outputs", "UsageError", "atomic_path", "dumps_json",
           "finite_or_none", "first_non_finite", "non_negative_int", "open_probability", "positive_int", "probability",
           "replace_folder"]  # fmt: skip
