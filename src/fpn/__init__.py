"""fpn: Feature Pyramid Networks for Object Detection (Lin et al., CVPR 2017) in PyTorch."""

__version__ = "0.1.0"
