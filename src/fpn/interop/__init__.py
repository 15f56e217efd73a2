"""Other libraries' checkpoints as our config and weights (docs/interop.md).

``read_checkpoint`` reads a file without running pickled code, ``identify`` names the library,
``convert_detector`` returns a ``ForeignDetector`` (our config + our state dict).
"""

from fpn.interop.detectors import ForeignDetector, convert_detector, describe, identify
from fpn.interop.reading import UnsafeCheckpointError, read_checkpoint
from fpn.interop.tables import ConversionError

__all__ = ["ConversionError", "ForeignDetector", "UnsafeCheckpointError", "convert_detector", "describe",
           "identify", "read_checkpoint"]
