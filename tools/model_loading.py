"""Loading a model folder so that what runs is the model that was saved, or one line saying why it is not.

transformers' `from_pretrained` fills a tensor missing from the weights with random values, drops an unexpected
one, casts int8 or bool weights to floats and loads NaN, each with at most a warning (which the commands silence):
the model then runs, exits 0 and writes results of a model nobody trained. `load_checked_model` is the one gate
that the inference commands (`vistr segment`, `vistr inspect`, through `tools/cli.py`) and the trainer's
`--init-from` (`tools/model_source.py`) go through. It reads the weight files' headers before any tensor is
loaded (a damaged file or a pickle that would run code is named there), lets transformers report what it could
not fill (`output_loading_info=True`), and checks what was loaded against what was stored.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig
from vistr.configuration_vistr import FLOAT_DTYPES, VisTRConfig, config_problems
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation

# The files `from_pretrained` reads the weights from, in the order it prefers them.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# safetensors' dtype names, as torch names them
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}  # fmt: skip
REDO = "convert, train or download the model again"


class ModelWeightsError(ValueError):
    """A model whose stored weights or config are not a model that can run as saved; the message is one line."""


def load_checked_model(
    source: str, what: str, allow_missing: bool = False, **kwargs
) -> tuple[VisTRForVideoInstanceSegmentation, set[str]]:
    """`from_pretrained(source, **kwargs)`, refused with one line (`what` names the source: "--model M") unless the
    model that runs is the stored one: no tensor missing (unless `allow_missing`: the trainer reports and bounds
    those itself), unexpected or of another shape, none stored in a dtype its weight cannot hold (int8 or bool
    for a float), no NaN or infinite value anywhere. Returns the model and the names of the missing tensors."""
    folder = Path(source)
    stored = stored_dtypes(folder, what) if folder.is_dir() else None  # damage and code payloads before any loading
    config = _vistr_config(source, what, kwargs.get("local_files_only", False))
    try:
        model, info = VisTRForVideoInstanceSegmentation.from_pretrained(
            source, config=config, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    except pickle.UnpicklingError:  # a Hub model's pytorch_model.bin (a folder's was read above)
        raise ModelWeightsError(_runs_code(what, WEIGHT_FILES[-1])) from None
    if stored is None:
        stored = stored_dtypes(_downloaded_folder(source), what)
    problems = weight_problems(model, info, stored, allow_missing)
    if problems:
        raise ModelWeightsError(f"{what}: {'; '.join(problems)}; {REDO}")
    return model, set(info["missing_keys"])


def weight_problems(model: torch.nn.Module, info: Mapping[str, object], stored: Mapping[str, str],
                    allow_missing: bool) -> list[str]:  # fmt: skip
    """Each way the loaded `model` differs from what its files store, as `count what (first: names)`: missing
    (unless `allow_missing`), unexpected and reshaped tensors as transformers' loading `info` reports them, dtypes
    from the files' headers (`stored`: name -> dtype) that the model's tensor cannot hold, and non-finite values."""
    own = model.state_dict()
    missing = [] if allow_missing else sorted(info["missing_keys"])
    reshaped = [f"{name} {list(saved)} for {list(shape)}" for name, saved, shape in sorted(info["mismatched_keys"])]
    wrong_dtypes = [f"{name} ({dtype})" for name, dtype in sorted(stored.items())
                    if name in own and not _holds(own[name].dtype, dtype)]  # fmt: skip
    non_finite = [name for name, tensor in own.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    problems = [
        _named(missing, "tensors the model needs are missing from its weights, so they would run with random values"),
        _named(sorted(info["unexpected_keys"]), "tensors in its weights are not in the model its config.json gives"),
        _named(reshaped, "tensors have other shapes than config.json gives: its weights do not fit its config.json"),
        _named(wrong_dtypes, "tensors are stored in a dtype that does not hold the model's floating-point weights"),
        _named(non_finite, "tensors hold NaN or infinite values"),
    ]
    return [problem for problem in problems if problem]


def stored_dtypes(folder: Path, what: str) -> dict[str, str]:
    """name -> dtype (torch's name) of every tensor in the weight file `from_pretrained` reads from `folder`, from
    the safetensors headers or a memory map of a pytorch_model.bin: no tensor data is read. A damaged file, or a
    pickle holding objects other than tensors (refused, never run), is one line."""
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise ModelWeightsError(f"{what} holds no weights ({', '.join(WEIGHT_FILES)}); {REDO}")
    if weights.name == "pytorch_model.bin":
        return _pickled_dtypes(weights, what)
    dtypes = {}
    for file in _safetensors_files(weights, what):
        try:
            with safe_open(file, framework="pt") as handle:
                dtypes.update({name: handle.get_slice(name).get_dtype() for name in handle.keys()})
        except Exception as error:  # noqa: BLE001 - the Rust reader raises its own SafetensorError for any damage
            raise ModelWeightsError(f"{what}: {file.name} is damaged ({error}); {REDO}") from None
    return {name: _SAFETENSORS_DTYPES.get(dtype, dtype) for name, dtype in dtypes.items()}


def _safetensors_files(weights: Path, what: str) -> list[Path]:
    """`weights` itself, or the shards its index names (plain file names beside it: no path leaves the folder)."""
    if weights.suffix != ".json":
        return [weights]
    try:
        shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelWeightsError(f"{what}: {weights.name} is no weight index ({type(error).__name__}); {REDO}") from None
    if not all(isinstance(shard, str) and shard == Path(shard).name and shard not in ("", "..") for shard in shards):
        raise ModelWeightsError(f"{what}: {weights.name} names shards outside the model folder; {REDO}")
    return [weights.parent / shard for shard in shards]


def _pickled_dtypes(weights: Path, what: str) -> dict[str, str]:
    """The dtypes of a pytorch_model.bin, read as transformers reads it (`weights_only`), memory-mapped."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(weights))
    except pickle.UnpicklingError:
        raise ModelWeightsError(_runs_code(what, weights.name)) from None
    except Exception as error:  # noqa: BLE001 - torch raises many types for damaged files
        raise ModelWeightsError(f"{what}: {weights.name} is damaged or not a PyTorch file ({type(error).__name__}); "
                                f"{REDO}") from None  # fmt: skip
    if not isinstance(state, Mapping) or not all(isinstance(tensor, torch.Tensor) for tensor in state.values()):
        raise ModelWeightsError(f"{what}: {weights.name} holds no state dict of tensors; {REDO}")
    return {name: str(tensor.dtype).removeprefix("torch.") for name, tensor in state.items()}


def _runs_code(what: str, name: str) -> str:
    # never the advice of torch's own message (`weights_only=False`), which would run the file's code
    return (f"{what}: {name} holds Python objects other than tensors, which are refused because loading them could "
            f"run code; use a model saved as model.safetensors ({REDO})")  # fmt: skip


def _vistr_config(source: str, what: str, local_files_only: bool) -> VisTRConfig:
    """The source's config, checked (types, sizes, combinations) before any weight is allocated."""
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    except (ValueError, TypeError) as error:  # VisTRConfig's checks list every problem, one per line
        raise ModelWeightsError(f"{what}: config.json does not describe a VisTR model this code can build: "
                                f"{config_problems(error)}; fix it or restore the one saved with its weights") from None
    if not isinstance(config, VisTRConfig):
        raise ModelWeightsError(f"{what}: config.json is for model_type {config.model_type!r}, not 'vistr'")
    return config


def _downloaded_folder(source: str) -> Path:
    """The local snapshot folder from_pretrained downloaded a Hub model into (its config.json's folder)."""
    from transformers.utils import cached_file

    return Path(cached_file(source, "config.json", local_files_only=True)).parent


def _holds(model_dtype: torch.dtype, stored: str) -> bool:
    """A tensor stored as `stored` loads into one of `model_dtype` without becoming other values: a floating-point
    weight may be stored in any `FLOAT_DTYPES` (from_pretrained casts it), not as int8 or bool."""
    return stored in FLOAT_DTYPES if model_dtype.is_floating_point else str(model_dtype) == f"torch.{stored}"


def _named(names: list[str], what: str) -> str | None:
    return f"{len(names)} {what} (first: {', '.join(names[:3])})" if names else None


__all__ = ["ModelWeightsError", "WEIGHT_FILES", "load_checked_model", "stored_dtypes", "weight_problems"]
