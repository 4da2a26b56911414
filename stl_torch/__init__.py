"""stl-torch: the Strassen-Tile (STL) operator as a drop-in for nn.Linear."""
import torch  # noqa: F401  (loads libtorch before the C extension registers its ops)

from . import _C  # noqa: F401  registers torch.ops.stl_torch.*
from . import init, ops, tiling  # noqa: F401  ops: fake kernels + autograd
from . import decode  # noqa: F401
from .config import CalibrationConfig, STLConfig
from .convert import ConversionReport, apply_conversion, convert, plan_conversion
from .flops import FlopReport, flops
from .hub import from_pretrained
from .nn import STLinear
from .ops import stl_linear

__all__ = ["STLinear", "stl_linear", "convert", "from_pretrained", "STLConfig", "CalibrationConfig",
           "ConversionReport", "plan_conversion", "apply_conversion", "flops", "FlopReport", "init", "tiling", "decode"]
__version__ = "0.1.0"
