"""bss2_backend: a GPU tensor-kernel backend that emulates the BrainScaleS-2 neuromorphic chip."""
__version__ = "0.1.0"

from . import constants
from .chip import Chip, CircuitNeurons, LayerParams
from .dynamics import Recurrence, cuba_lif, li
from .mismatch import Mismatch
from .noise import Noise
from .nn import LIFLayer, LILayer
from .parameters import Calibration, CircuitParams, LIFParams
from .placement import Placement, PlacementError
from .population import Chips
from .readout import ReadoutParams
from .surrogates import Surrogate
from .weights import Saturation, quantise, to_hardware

__all__ = ["Chip", "Chips", "CircuitNeurons", "LayerParams", "Recurrence", "cuba_lif", "li", "Mismatch",
           "Noise", "LIFLayer", "LILayer", "Calibration", "CircuitParams", "LIFParams", "Placement",
           "PlacementError", "ReadoutParams", "Surrogate", "Saturation", "quantise", "to_hardware",
           "constants", "__version__"]
