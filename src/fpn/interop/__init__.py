"""Other libraries' checkpoints as our config and weights (docs/interop.md).

A checkpoint is read without running pickled code by ``fpn.safe_reading.read_checkpoint``;
then ``identify`` names the library and ``convert_detector`` returns a ``ForeignDetector`` (our
config + our state dict). Their errors are ``fpn.errors``' ``ConversionError`` and
``CheckpointError``.
"""

from fpn.interop.detectors import ForeignDetector, convert_detector, describe, identify

__all__ = ["ForeignDetector", "convert_detector", "describe", "identify"]
