"""A training run's resumable state on disk without pickle: one safetensors file, written atomically.

``save(path, state)`` takes a nested structure of dicts, lists, tuples, plain scalars, numpy arrays
and torch tensors (model and optimiser state dicts, RNG states, history): every tensor goes into
the safetensors body, everything else into a JSON tree stored in the file's metadata, with each
tensor replaced by a reference to its name. One file, so the tensors and the JSON can never come
from two different epochs, and reading it back can only ever build tensors and plain values:
unpickling a planted run folder's checkpoint would run whatever code it holds.

``checkpoint.pt`` (torch.save, that is pickle) is the format of older versions: never loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukoscope.errors import ConfigError
from leukoscope.io import atomic_path

NAME = "checkpoint.safetensors"
LEGACY = "checkpoint.pt"
FORMAT = "leukoscope-checkpoint/1"
_TENSOR, _TUPLE, _ARRAY, _DICT = "__tensor__", "__tuple__", "__array__", "__dict__"


def find(folder: Path) -> Path | None:
    """The run folder's checkpoint, if any; a pickle checkpoint of an older version is refused."""
    legacy = Path(folder) / LEGACY
    if legacy.exists():
        raise ConfigError(f"{legacy}: old checkpoint format (pickle), not loaded because unpickling can "
                          "run code; delete it (or the run folder) to start the run over")
    path = Path(folder) / NAME
    return path if path.exists() else None


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file + rename)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_encode(state, "", tensors))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "state": tree})


def load(path: Path) -> dict[str, Any]:
    """The state ``save`` wrote; anything else (truncated, foreign, planted) is one ``ConfigError``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no mapping
        state = _decode(json.loads(meta["state"]), tensors)
    except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, the remedy is the same
        raise unreadable(path, e) from None
    if not isinstance(state, dict):
        raise unreadable(path, ValueError("not a mapping"))
    return state


def unreadable(path: Path, why: Exception) -> ConfigError:
    """The one-line error for a checkpoint that cannot be resumed from."""
    return ConfigError(f"{path}: not a usable checkpoint ({type(why).__name__}: {why}); "
                       "delete it to start the run over")


def _encode(obj: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[name] = obj.detach().cpu().contiguous()
        return {_TENSOR: name}
    if isinstance(obj, np.ndarray):
        return {_ARRAY: obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{name}/{k}", tensors) for k, v in obj.items()}
        # optimiser state is keyed by int: JSON would turn the keys into strings
        return {_DICT: [[_encode(k, f"{name}/{i}k", tensors), _encode(v, f"{name}/{i}", tensors)]
                        for i, (k, v) in enumerate(obj.items())]}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if _TENSOR in obj:
        return tensors[obj[_TENSOR]]
    if _ARRAY in obj:
        dtype = np.dtype(obj["dtype"])
        if dtype.kind not in "biuf":
            raise ValueError(f"array of dtype {dtype}")
        return np.asarray(obj[_ARRAY], dtype=dtype)
    if _TUPLE in obj:
        return tuple(_decode(v, tensors) for v in obj[_TUPLE])
    if _DICT in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj[_DICT]}
    return {k: _decode(v, tensors) for k, v in obj.items()}
