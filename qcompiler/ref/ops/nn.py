"""Neural-network ops: convolution, dense, pooling, normalisation."""

import numpy as np

from ..registry import op
