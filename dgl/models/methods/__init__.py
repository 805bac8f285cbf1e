"""The methods registry: every row of the papers' comparison tables is one entry here.

A method declares which prompts or modules it adds to the frozen CLIP and which CLIP weights
train; the training and evaluation code only calls `prompts()`, `encode_text()` and
`encode_video()`.
"""

from dgl.models.methods import baselines, dgl, peft, vop  # noqa: F401  (registers the methods)
from dgl.models.methods.base import METHODS, Method, build_method, count_parameters

__all__ = ["METHODS", "Method", "build_method", "count_parameters"]
