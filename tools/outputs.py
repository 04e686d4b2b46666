"""The one rule every writer of the tools follows, so that nothing a user owns is lost.

    with Outputs(inputs=[video]) as outputs:          # checks and stages; nothing is replaced yet
        results = outputs.file("out.json")            # a temporary file beside out.json
        overlay = outputs.file("ov.mp4", what="--overlay", suffixes=OVERLAY_SUFFIXES)
        ... the work, writing into `results` and `overlay` ...
    # here both are renamed into place together; after an error, Ctrl-C or SIGTERM neither is, and the
    # temporary files are gone

- Every output path is checked when it is added, before any work: its folder can be written, it is not
  a folder where a file is expected, its name fits the file system, its suffix is one the writer knows.
- No output may be, lie inside or contain an input (symlinks resolved), and no two outputs may be the same
  path: writing `--output precious.mp4` over the video being read, or replacing a folder that holds the
  checkpoint being converted, is refused with one line.
- Only new paths and regular files are written: a device, named pipe or socket is never turned into a file,
  and a link that leads nowhere is never written through (it would create files where it points).
  A non-empty folder is replaced or reused only if it is one this project wrote, recognised by what its
  writer puts there and nothing else (`foreign_folder`, `foreign_model_folder`).
- All outputs of one command are committed at the end, together; a failure leaves the old files as they were,
  and one that comes from writing (disk full, permission) is one line naming the output and the fix.
- JSON goes through `dumps_json`, which refuses NaN and infinity (invalid JSON) with the path of the number.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import math
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OVERLAY_SUFFIXES = (".gif", ".mp4", ".mkv", ".mov", ".avi")
_TEMPORARY_MARK = ".vistr-tmp"


class UsageError(ValueError):
    """An option value or output path that cannot work; the command stops before any work (exit code 2)."""


class NonFiniteError(ValueError):
    """A NaN or infinity where a number is to be written: JSON cannot hold it (the results would be unreadable)."""


class OutputWriteError(OSError):
    """Writing an output failed during the work (disk full, no permission); the message names it and the fix."""


# errno -> (what happened, what to do in {folder}), for the failures that writing an output can meet
_SPACE = "free space on the disk of {folder}, or choose a path on another disk"
_WRITE_FAILURES = {
    errno.ENOSPC: ("the disk is full", _SPACE),
    errno.EDQUOT: ("the disk quota is used up", _SPACE),
    errno.EFBIG: ("the file is larger than the file system or a limit allows", _SPACE),
    errno.EACCES: ("permission denied", "make {folder} writable, or choose a folder you can write to"),
    errno.EPERM: ("operation not permitted", "make {folder} writable, or choose a folder you can write to"),
    errno.EROFS: ("the file system is read-only", "choose a folder on a writable disk instead of {folder}"),
}
# errors that only writing meets, whichever file they name (the others only when they name an output's file)
_ALWAYS_WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# safetensors' writer names no file: "Error while serializing: I/O error: No space left on device (os error 28)"
_SAFETENSORS_WRITE_ERROR = re.compile(r"^Error while serializing: .*\(os error (\d+)\)")
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))  # fmt: skip


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path)).resolve()  # absolute first, so `.` and `..` never stay in the name


def _overlap(a: Path, b: Path) -> bool:
    """Whether one path is the other or lies inside it."""
    return a == b or a in b.parents or b in a.parents


def _kind(path: Path) -> str:
    """What `path` is, in words ("a file", "a folder", "a character device", ...), for messages."""
    mode = path.stat().st_mode
    return next((name for is_kind, name in _KINDS if is_kind(mode)), "a file")


def _dangling_link(path: str | os.PathLike) -> Path | None:
    """The first link on the way to `path` (`path` included) that leads to no existing path, or None.

    Resolving such a link names a path outside the one the user gave: writing there would create folders and
    files where the link happens to point (a loop leads nowhere too). `os.path`'s tests answer False where
    `Path.is_symlink` raises (a name too long for the file system, which the later checks refuse)."""
    absolute = Path(os.path.abspath(path))  # `..` dropped as `_resolved` drops it
    return next((link for link in reversed([absolute, *absolute.parents])
                 if os.path.islink(link) and not os.path.exists(link)), None)  # fmt: skip


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


def _temporary_name(final: Path, limit: int, mark: str = _TEMPORARY_MARK) -> tuple[str, str]:
    """(prefix, suffix) for mkstemp/mkdtemp: hidden, marked, keeping the suffix writers pick formats by,
    and short enough for any legal target name (mkstemp adds 8 random characters).

    The name is valid UTF-8 even where the target's is not (its undecodable bytes become U+FFFD): writers
    that put the folder's name into a text file, as `save_pretrained`'s default model card does, would fail
    on it. Lengths are counted in the bytes the file system stores."""
    suffix = mark + _utf8(final.suffix)
    room = limit - len(suffix.encode()) - 8 - 2
    stem = _utf8(final.stem)
    while stem and len(stem.encode()) > room:
        stem = stem[:-1]
    return f".{stem}.", suffix


def _utf8(name: str) -> str:
    return os.fsencode(name).decode("utf-8", "replace")


def _make_ordinary(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp make private entries; the committed ones get the permissions of any new file."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


def _error_files(error: OSError) -> list[Path]:
    """The files an error names (a copy names both ends; a file descriptor is no name)."""
    return [Path(os.fsdecode(name)) for name in (error.filename, error.filename2)
            if isinstance(name, (str, bytes, os.PathLike))]  # fmt: skip


def _raise_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so every `finally` removes its temporary files


@dataclass
class _Staged:
    """One output between its check and its commit: the temporary file or folder written instead of `target`."""

    temporary: Path
    target: Path
    kind: str  # "file" | "folder"
    what: str  # the option that named it, for messages

    def holds(self, path: Path) -> bool:
        """Whether `path` is the temporary file or folder, or lies in it."""
        return path == self.temporary or self.temporary in path.parents


class Outputs:
    """All outputs of one command: checked when added, staged beside their targets, committed together.

    Use it as a context manager: leaving the block normally commits, leaving it by an exception (SIGTERM
    included, which it turns into SystemExit while the block runs) removes every temporary file.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike | None] = ()):
        self.inputs = [_resolved(path) for path in inputs if path is not None]
        self._staged: list[_Staged] = []
        self._created: list[Path] = []  # folders made for targets, removed again if nothing is committed
        self._previous_handler = None

    # ------------------------------------------------------------------------------------------- checks

    def check_apart(self, path: str | os.PathLike, what: str = "--output") -> Path:
        """The resolved `path`, after refusing one that is, lies inside or contains an input (symlinks resolved);
        for a path a command writes without staging it here (a folder of parts, say)."""
        target = _resolved(path)
        for source in self.inputs:
            if _overlap(target, source):
                kind = "is" if target == source else ("contains" if target in source.parents else "is inside")
                raise UsageError(f"{what} {path} {kind} the input {source}; choose an output path apart from the inputs")
        return target

    def _check(self, path: str | os.PathLike, what: str) -> Path:
        """The resolved target, after the checks every output shares; raises UsageError."""
        if str(path).strip() == "":
            raise UsageError(f"{what} is empty; give a file name")
        if (link := _dangling_link(path)) is not None:
            raise UsageError(f"{what} {path}: {link} is a link to {os.readlink(link)}, which does not exist; writing "
                             "through it would create files where it points: remove the link, or give the path you "
                             "mean")  # fmt: skip
        target = self.check_apart(path, what)
        for staged in self._staged:
            if _overlap(target, staged.target):
                raise UsageError(f"{what} {path} collides with another output of this command ({staged.target}); "
                                 "give distinct paths")  # fmt: skip
        folder = _existing_ancestor(target)
        if not folder.is_dir():
            raise UsageError(f"{what} {path}: {folder} is {_kind(folder)}, not a folder; choose another path")
        size = len(os.fsencode(target.name))
        if size > _name_max(folder):
            raise UsageError(f"{what} {path}: the name is {size} bytes, longer than the file system allows "
                             f"({_name_max(folder)}); choose a shorter name")  # fmt: skip
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
        self._staged.append(_Staged(Path(name), target, kind, what))
        return Path(name)

    # ------------------------------------------------------------------------------------------- adding

    def check_file(self, path: str | os.PathLike, what: str = "--output", suffixes: Iterable[str] | None = None) -> Path:
        """Check `path` as a file output without writing anything (safe on every process of a distributed job)."""
        target = self._check(path, what)
        if target.is_dir():
            raise UsageError(f"{what} {path} is a folder; give a file name inside it")
        if target.exists() and not target.is_file():
            raise UsageError(f"{what} {path} is {_kind(target)}, not a regular file; only new paths and regular files "
                             "are written: choose another path")  # fmt: skip
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

    def folder(self, path: str | os.PathLike, what: str = "--output",
               replace_unless: Callable[[Path], str | None] | None = None, overwrite: bool = True,
               if_not_empty: str = "choose a new folder") -> Path:
        """Check `path` as a folder output and return the empty folder to fill instead (swapped in at commit).

        An existing non-empty folder is replaced only when `replace_unless` finds nothing foreign in it (it
        returns None for a folder of the kind this command writes, such as `foreign_model_folder` for a model
        folder) and `overwrite` is set. A foreign folder is refused with the reason, one of ours without
        `overwrite` with `if_not_empty` as the advice; neither is ever deleted.
        """
        return self._stage(self.check_folder(path, what, replace_unless, overwrite, if_not_empty), what, path, "folder")

    def check_folder(self, path: str | os.PathLike, what: str = "--output",
                     replace_unless: Callable[[Path], str | None] | None = None, overwrite: bool = True,
                     if_not_empty: str = "choose a new folder") -> Path:
        """The checks of `folder`, writing nothing (safe on every process of a distributed job)."""
        target = self._check(path, what)
        if target.exists() and not target.is_dir():
            raise UsageError(f"{what} {path} is {_kind(target)}, not a folder; choose another path")
        if target == _resolved(os.getcwd()) or target in _resolved(os.getcwd()).parents or target == Path.home():
            raise UsageError(f"{what} {path} is the current folder or above it; give a new folder to write")
        if target.is_dir() and any(target.iterdir()):
            if replace_unless is not None and (reason := replace_unless(target)) is not None:
                raise UsageError(f"{what} {path} {reason}, so it is not one this project wrote; it is never "
                                 "replaced: choose a new folder, or move this one away")  # fmt: skip
            if replace_unless is None or not overwrite:
                raise UsageError(f"{what} {path} already exists and is not empty; {if_not_empty}")
        folder = _existing_ancestor(target.parent)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{what} {path}: cannot write in {folder} (permission denied); choose a folder you can write to")
        return target

    # ------------------------------------------------------------------------------------------- finishing

    def commit(self) -> None:
        """Rename every staged output into place (a replaced folder is deleted only after the swap)."""
        try:
            for staged in self._staged:
                if staged.kind == "file":
                    _make_ordinary(staged.temporary, 0o666)
                    os.replace(staged.temporary, staged.target)
                else:
                    _make_ordinary(staged.temporary, 0o777)
                    replace_folder(staged.temporary, staged.target)
        except OSError as error:
            self._raise_if_writing(error)
            raise
        self._staged.clear()
        self._created.clear()

    def discard(self) -> None:
        """Remove every temporary file and folder, and the folders made for them."""
        for staged in self._staged:
            if staged.kind == "file":
                staged.temporary.unlink(missing_ok=True)
            else:
                shutil.rmtree(staged.temporary, ignore_errors=True)
        self._staged.clear()
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break  # something else was put there meanwhile: it stays
        self._created.clear()

    def _write_error(self, error: BaseException) -> OutputWriteError | None:
        """`error` as one line naming the output it hit and the fix, if it is a failure to write one (disk
        full, permission); None for any other error, such as one reading an input, whose message names its file."""
        if isinstance(error, OSError):
            number, files = error.errno, _error_files(error)
            hit = [staged for staged in self._staged if any(staged.holds(file) for file in files)]
            if not files and number in _ALWAYS_WRITING:
                hit = self._staged  # a write that names no file (a Python file object's): the outputs being written
        else:
            found = _SAFETENSORS_WRITE_ERROR.search(str(error)) if type(error).__name__ == "SafetensorError" else None
            number, hit = (int(found.group(1)), self._staged) if found else (None, [])
        if number not in _WRITE_FAILURES or not hit:
            return None
        happened, fix = _WRITE_FAILURES[number]
        named = ", ".join(f"{staged.what} {staged.target}" for staged in hit)
        return OutputWriteError(f"cannot write {named}: {happened}; {fix.format(folder=hit[0].target.parent)}")

    def _raise_if_writing(self, error: BaseException) -> None:
        if (failure := self._write_error(error)) is not None:
            raise failure from error

    def __enter__(self) -> Outputs:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, _raise_on_sigterm)
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            if error_type is None:
                self.commit()
            else:
                self._raise_if_writing(error)
        finally:
            self.discard()
            if self._previous_handler is not None:
                signal.signal(signal.SIGTERM, self._previous_handler)


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder `new` at `target`; an old `target` is moved aside first and deleted last."""
    if not target.exists():
        os.replace(new, target)
        return
    prefix, suffix = _temporary_name(target, _name_max(target.parent), mark=".old" + _TEMPORARY_MARK)
    retired = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=target.parent))
    os.replace(target, retired / target.name)
    os.replace(new, target)
    shutil.rmtree(retired)


def shown(path: str | os.PathLike) -> str:
    """`path` as text any terminal takes: bytes of a name that are not UTF-8 as `\\xNN` escapes (print would
    fail on them, after the work is done, wherever the output encoding is strict)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------------- folders this project wrote

# The files a model folder of this project holds, besides the code (`_model_code_files`): what `save_pretrained`
# writes (weights, possibly sharded, config, video processor, card) and the trainer's loss curve.
_MODEL_FOLDER_FILE = re.compile(r"config\.json|video_preprocessor_config\.json|README\.md|loss_curve\.png"
                                r"|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json")


# the code files a complete model folder holds: each of these with the siblings it imports
_REMOTE_CODE_ENTRIES = ("modeling_vistr.py", "image_processing_vistr.py", "pipeline_vistr.py")


@functools.cache
def _model_code_files() -> frozenset[str]:
    """The code files saving a model folder copies beside the weights: the model's, the video processor's and
    the pipeline's, each with the files it imports."""
    from transformers.dynamic_module_utils import get_relative_import_files

    package_root = Path(__file__).resolve().parents[1]
    entries = [package_root / name for name in _REMOTE_CODE_ENTRIES]
    return frozenset(Path(name).name for entry in entries for name in [entry, *get_relative_import_files(entry)])


def json_object(path: Path) -> dict:
    """The JSON object in the regular file `path`, or {} when there is none to read."""
    try:
        data = json.loads(path.read_bytes()) if path.is_file() else {}
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_our_card(path: Path) -> bool:
    """Whether `path` is a model card of ours: its metadata (YAML front matter) is tagged `vistr`."""
    import yaml
    from huggingface_hub.repocard import metadata_load

    try:
        metadata = metadata_load(path) if path.is_file() else None
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        return False
    tags = metadata.get("tags") if isinstance(metadata, dict) else None
    return isinstance(tags, list) and "vistr" in tags


def is_temporary(name: str) -> bool:
    """Whether `name` is one of the temporary files or folders `Outputs` writes beside a target (a process killed
    by SIGKILL, which runs no cleanup, leaves it behind)."""
    return name.startswith(".") and _TEMPORARY_MARK in name


def foreign_folder(
    folder: Path,
    known: Callable[[str], bool],
    content: Callable[[Path], str | None],
    our_link: Callable[[Path], bool] = lambda entry: False,
) -> str | None:
    """Why `folder` is not one a writer of this project wrote, or None when it is: it holds only regular files
    (and links `our_link` recognises) whose names `known` takes, and `content` (the test of what they hold) finds
    nothing amiss.

    The recognition every replaced or reused folder gets, so that nothing a user put there is ever deleted.
    Links, folders and special files are named first, before `content` opens any file: a named pipe or a
    device would hang or misbehave the reader.
    """
    entries = sorted(folder.iterdir())
    odd = next((entry for entry in entries if not our_link(entry) and (entry.is_symlink() or not entry.is_file())),
               None)  # fmt: skip
    if odd is not None:
        return f"holds {odd.name}, which is {'a link' if odd.is_symlink() else _kind(odd)}"
    if (reason := content(folder)) is not None:
        return reason
    foreign = next((entry for entry in entries if not known(entry.name)), None)
    return None if foreign is None else f"holds {foreign.name}, which this project does not write"


def _model_file(name: str) -> bool:
    return bool(_MODEL_FOLDER_FILE.fullmatch(name)) or name in _model_code_files()


def _not_our_model(folder: Path) -> str | None:
    """Why the files of `folder` are not a model of ours: a config.json of model_type vistr and our card."""
    model_type = json_object(folder / "config.json").get("model_type")
    if model_type != "vistr":
        return f"holds a config.json of model_type {model_type!r}, not 'vistr'" if model_type else \
            "holds no config.json with model_type 'vistr'"
    return None if _is_our_card(folder / "README.md") else "holds no VisTR model card (README.md)"


def _link_to_our_code(entry: Path) -> bool:
    """A code file of a model folder linked to the same file of this package, as the bundled model's are (its
    code is the package's own, held once)."""
    package_root = Path(__file__).resolve().parents[1]
    return entry.is_symlink() and entry.name in _model_code_files() and entry.resolve() == package_root / entry.name


def foreign_model_folder(folder: Path) -> str | None:
    """Why `folder` is not a model folder this project wrote, or None when it is: a `replace_unless` test
    for `Outputs.folder`, so that `--overwrite` and the trainer replace only their own model folders.

    Recognised by what our writers put there: a config.json of model_type vistr, our model card, and no
    other file (another model's folder, a link elsewhere, a device, or a file the user added is never deleted).
    """
    return foreign_folder(folder, _model_file, _not_our_model, our_link=_link_to_our_code)


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


__all__ = ["OVERLAY_SUFFIXES", "NonFiniteError", "OutputWriteError", "Outputs", "UsageError", "atomic_path",
           "dumps_json", "finite_or_none", "first_non_finite", "foreign_folder", "foreign_model_folder", "is_temporary",
           "json_object", "non_negative_int", "open_probability", "positive_int", "probability", "replace_folder",
           "shown"]  # fmt: skip
