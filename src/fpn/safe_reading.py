"""Reading weight files without running any code from them (docs/interop.md §9).

The one module that opens a weights file, for our own checkpoints (``fpn.engine.checkpoint``)
and for other libraries' (``fpn.interop``):

- ``.safetensors``: safetensors (a format that cannot hold code);
- ``.pkl`` (detectron2's model zoo: ``{"model": {name: numpy array}, "__author__": ...}``): a
  restricted unpickler that builds numpy arrays, dtypes and plain containers only; any other
  global the pickle names (``os.system``, ``builtins.eval``, a class) is refused before it is
  looked up, so nothing it names is ever called;
- ``.pth`` / ``.pt`` / anything else: ``torch.load(weights_only=True)``.

A file that would run code raises ``UnsafeCheckpointError``; a missing, truncated or foreign file
``CheckpointError``; both in one line naming the file. This module imports only ``fpn.errors``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpn.errors import CheckpointError, UnsafeCheckpointError

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

# An error message quotes at most this much of the underlying library's first line.
QUOTED_ERROR_CHARS = 160


def first_line(error: BaseException | str) -> str:
    """The first line of an underlying error, cut to ``QUOTED_ERROR_CHARS``."""
    lines = str(error).splitlines()
    name = type(error).__name__ if isinstance(error, BaseException) else "error"
    return (lines[0] if lines else name)[:QUOTED_ERROR_CHARS]


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


def read_pickle_of_arrays(path: str | Path) -> Any:
    """A ``.pkl`` of numpy arrays and plain containers (detectron2's model zoo), nothing else."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            return _ArraysOnlyUnpickler(file, path).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise CheckpointError(f"{path}: not a readable pickle ({first_line(err)})") from None


def torch_load_safely(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, its failures as one-line errors."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        named = re.search(r"GLOBAL ([\w.]+)", text)
        if named or "weights_only" in text or "Unsupported global" in text:
            what = named[1] if named else "a Python object"
            raise UnsafeCheckpointError(
                f"{path}: refusing to load: the pickle would execute code ({what} is not a tensor or "
                "plain container; keep only the weights, as mmdetection's publish_model.py does)"
            ) from None
        raise CheckpointError(f"{path}: corrupt or truncated ({first_line(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated ({first_line(err)})") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; a missing or damaged file is a ``CheckpointError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(err)})") from None


def _arrays_to_tensors(value: Any, path: Path) -> Any:
    """numpy arrays -> tensors, through mappings (a checkpoint nests its state dict one level)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise CheckpointError(f"{path}: holds a {value.dtype} array, not numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Mapping):
        return {key: _arrays_to_tensors(item, path) for key, item in value.items()}
    return value


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a weights file as a mapping, read without executing pickled code.

    Args:
        path: a ``.pkl`` (detectron2 model zoo), ``.pth`` / ``.pt`` (any library) or
            ``.safetensors`` file.
    Returns:
        The file's top-level mapping (a state dict, or a wrapper such as ``{"model": ...}`` or
        ``{"state_dict": ..., "meta": ...}``), numpy arrays turned into tensors.
    Raises:
        UnsafeCheckpointError: the file would run code to load (one line, naming the file and,
            where known, the global it asks for).
        CheckpointError: the file is missing, unreadable, or does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    match path.suffix:
        case ".pkl":
            contents = read_pickle_of_arrays(path)
        case ".safetensors":
            contents = read_safetensors(path)
        case _:
            contents = torch_load_safely(path)
    if not isinstance(contents, Mapping):
        raise CheckpointError(f"{path}: holds a {type(contents).__name__}, not a mapping of tensors")
    return _arrays_to_tensors(contents, path)
