"""The one family of errors a user can fix (a missing file, a bad config value, a corrupt dataset).

``UserError``'s message is the single line the command line prints; every other exception is a
bug and prints its traceback. This module imports nothing from fpn, so every layer can use it.

The family, by what the user has to fix:

- ``ConfigError``: a config file, preset or override (an unknown field, a wrong type, parts of the
  model that do not fit together);
- ``DatasetError``: a dataset's annotations or images (``TooManyBadSamplesError``: more unreadable
  samples than ``train.max_bad_samples`` allows);
- ``CheckpointError``: a weights file that is missing, truncated or not what it claims to be
  (``UnsafeCheckpointError``: it would run code to load, and is refused);
- ``ConversionError``: another library's checkpoint that does not map onto our model;
- ``InitError``: a ``train.init`` source that cannot initialise this model;
- ``ExportError``: a model that cannot be exported, or the export extra is missing;
- ``PrecisionError``: a precision that is unknown or cannot run this model here (int8 without
  images to calibrate on, bf16 or int8 for segment proposals);
- ``NonFiniteLossError``: training diverged (a NaN or infinite loss);
- ``PathError``: a path the user named cannot be read or written (``PathNotFoundError``: it
  does not exist);
- ``MissingExtraError``: an optional dependency (``pip install 'fpn[serve]'``) is not installed;
- ``StaleRunError``: finished work (a reproduction's run) was made with another config than the
  code makes now; it is kept until the user says to move it aside and train it again.

Each class is also the standard exception it refines (a ``ConfigError`` is a ``ValueError``, a
``PathNotFoundError`` a ``FileNotFoundError``, a ``NonFiniteLossError`` a ``FloatingPointError``),
so code written against the standard exceptions keeps working; only ``UserError`` decides what
the command line reports in one line.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error the user can fix; its message (one line) names the file or field and the problem."""


class ConfigError(UserError, ValueError):
    """A config file or override names an unknown field, gives a value of the wrong type, or
    combines parts of the model that do not fit together."""


class DatasetError(UserError, ValueError):
    """A dataset file or image is missing or malformed; the message names the file."""


class TooManyBadSamplesError(DatasetError):
    """More unreadable samples than the configured limit (``train.max_bad_samples``)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, truncated or not what it claims to be."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file would need to run code to load (a pickled global); it is refused."""


class ConversionError(UserError, ValueError):
    """Another library's checkpoint does not map onto our model; the message names the key."""


class InitError(UserError, ValueError):
    """A ``train.init`` source cannot initialise this model; the message is one line."""


class ExportError(UserError, ValueError):
    """The model cannot be exported or run: the onnx / onnxruntime packages are missing, or the
    model is not one the exported graph describes."""


class PrecisionError(UserError, ValueError):
    """A precision that is unknown or cannot run this model here; the message says why."""


class NonFiniteLossError(UserError, FloatingPointError):
    """A loss became NaN or infinite; the message names the step and the loss term."""


class PathError(UserError, OSError):
    """A path the user named cannot be read or written (permissions, a file where a folder
    should be)."""


class PathNotFoundError(PathError, FileNotFoundError):
    """A path the user named (a run, a dataset folder, an input image) does not exist."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


class StaleRunError(UserError, RuntimeError):
    """Finished runs were made with another config than the code makes now; the message names
    them, the fields that differ and the option that moves them aside to train them again."""


def output_dir(path: str | Path, *, what: str = "output folder") -> Path:
    """``path`` created (with its parents) if missing; a ``PathError`` naming it if that fails."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PathError(f"{path}: cannot create the {what} ({err.strerror or err})") from None
    return path
