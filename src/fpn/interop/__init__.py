"""Other libraries' checkpoints as our config and weights (docs/interop.md).

``read_checkpoint`` (from ``fpn.safe_reading``) reads a file without running pickled code,
``identify`` names the library, ``convert_detector`` returns a ``ForeignDetector`` (our config +
our state dict).
"""

from fpn.errors import CheckpointError, ConversionError, UnsafeCheckpointError
from fpn.interop.detectors import ForeignDetector, convert_detector, describe, identify
from fpn.safe_reading import read_checkpoint

__all__ = ["CheckpointError", "ConversionError", "ForeignDetector", "UnsafeCheckpointError",
           "convert_detector", "describe", "identify", "read_checkpoint"]
