"""Other libraries' checkpoints as our config and weights (docs/interop.md).

A checkpoint is read without running pickled code by ``fpn.safe_reading.read_checkpoint``;
then ``fpn.interop.detectors.identify`` names the library and its ``convert_detector``
returns a ``ForeignDetector`` (our config + our state dict). Their errors are
``fpn.errors``' ``ConversionError`` and ``CheckpointError``.
"""
