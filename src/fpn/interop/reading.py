"""Read another library's checkpoint file without running any code from it (docs/interop.md §9).

- ``.pkl`` (detectron2's model zoo: ``{"model": {name: numpy array}, "__author__": ...}``):
  a restricted unpickler that builds numpy arrays, dtypes and plain containers only; any other
  global the pickle names (``os.system``, ``builtins.eval``, a class) is refused before it is
  looked up, so nothing it names is ever called.
- ``.pth`` / ``.pt`` / anything else: ``torch.load(weights_only=True)``.
- ``.safetensors``: safetensors (a format that cannot hold code).

numpy arrays become tensors; everything else in the file (metadata) is kept as read.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpn.interop.tables import ConversionError

# The only globals a detectron2 .pkl needs: numpy's array and scalar rebuilders (they build from
# bytes and call nothing else), dtypes, and _codecs.encode, which protocol-2 pickles written by
# Python 3 use to carry raw bytes.
PKL_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
})


class UnsafeCheckpointError(ConversionError):
    """A checkpoint file would need to run code to load; it is refused."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 pickles of numpy arrays
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in PKL_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.path}: refusing to load: the pickle names {module}.{name}, which could run "
            "code (a .pkl may hold only numpy arrays and plain containers)")


def _read_pkl(path: Path) -> Any:
    try:
        with open(path, "rb") as file:
            return _ArraysOnlyUnpickler(file, path).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ConversionError(f"{path}: not a readable pickle ({_first_line(err)})") from None


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        named = re.search(r"GLOBAL ([\w.]+)", text)
        if named or "weights_only" in text:
            what = named[1] if named else "a Python object"
            raise UnsafeCheckpointError(
                f"{path}: refusing to load: the pickle would execute code ({what} is not a tensor or "
                "plain container; keep only the weights, as mmdetection's publish_model.py does)"
            ) from None
        raise ConversionError(f"{path}: corrupt or truncated ({_first_line(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConversionError(f"{path}: corrupt or truncated ({_first_line(err)})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConversionError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None


def _first_line(error: BaseException) -> str:
    lines = str(error).splitlines()
    return (lines[0] if lines else type(error).__name__)[:160]


def _arrays_to_tensors(value: Any, path: Path) -> Any:
    """numpy arrays -> tensors, through mappings (a checkpoint nests its state dict one level)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ConversionError(f"{path}: holds a {value.dtype} array, not numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Mapping):
        return {key: _arrays_to_tensors(item, path) for key, item in value.items()}
    return value


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a checkpoint file as a mapping, read without executing pickled code.

    Args:
        path: a ``.pkl`` (detectron2 model zoo), ``.pth`` / ``.pt`` (any library) or
            ``.safetensors`` file.
    Returns:
        The file's top-level mapping (a state dict, or a wrapper such as ``{"model": ...}`` or
        ``{"state_dict": ..., "meta": ...}``), numpy arrays turned into tensors.
    Raises:
        UnsafeCheckpointError: the file would run code to load (one line, naming the file and,
            where known, the global it asks for).
        ConversionError: the file is missing, unreadable, or does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    match path.suffix:
        case ".pkl":
            contents = _read_pkl(path)
        case ".safetensors":
            contents = _read_safetensors(path)
        case _:
            contents = _read_torch(path)
    if not isinstance(contents, Mapping):
        raise ConversionError(f"{path}: holds a {type(contents).__name__}, not a mapping of tensors")
    return _arrays_to_tensors(contents, path)
