"""pydarknet: run original Darknet .cfg + .weights networks (YOLOv3, YOLOv4, Scaled-YOLOv4, YOLOv7) from Python."""
from .errors import CfgError, CfgWarning, CudaError, DarknetError, WeightsError
from .network import DeviceError, LayerView, Network, load
from .detect import Detector, ImageError, detect
from .results import Results
from . import models

__version__ = "0.1.0"
__all__ = ["load", "Network", "LayerView", "DarknetError", "CfgError", "CfgWarning", "WeightsError",
           "CudaError", "DeviceError", "detect", "Detector", "Results", "ImageError", "models"]
