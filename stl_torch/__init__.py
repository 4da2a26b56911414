"""stl-torch: the Strassen-Tile (STL) operator as a drop-in for nn.Linear."""
import torch  # noqa: F401  (loads libtorch before the C extension registers its ops)

from . import _C  # noqa: F401  registers torch.ops.stl_torch.*
from . import ops  # noqa: F401  fake kernels + autograd
from .ops import stl_linear
from .nn import STLinear

__all__ = ["STLinear", "stl_linear"]
__version__ = "0.1.0"
