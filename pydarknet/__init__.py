"""pydarknet: run original Darknet .cfg + .weights networks (YOLOv3, YOLOv4, Scaled-YOLOv4, YOLOv7) from Python."""

import os as _os

# The engine's OpenMP threads wait for each other at the end of every parallel step. GNU OpenMP spins for 300000
# pause instructions before sleeping: on virtual machines, where one pause can take ~60 ns, that is up to 18 ms of
# burnt CPU per wait whenever another process holds the partner thread's core. A shorter spin (about 60 us there)
# keeps the fast hand-over of an idle machine without that cost. It must be set before the OpenMP runtime loads
# with the engine; OMP_WAIT_POLICY or GOMP_SPINCOUNT set by the user take precedence.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "1000")
__version__ = "0.1.0"  # the one place the version is written; pyproject.toml reads it from here

from pydarknet import errors
from pydarknet.core.network import LayerView, Network, load
from pydarknet.errors import *  # noqa: F403
from pydarknet.hub import models
from pydarknet.inference.detect import Detector, detect
from pydarknet.inference.results import Results

__all__ = ["load", "Network", "LayerView", "detect", "Detector", "Results", "models", "__version__", *errors.__all__]
