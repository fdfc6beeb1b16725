"""rlcast: forecast where RL training of a language model is going, and jump ahead."""

from rlcast.errors import RlcastError

__version__ = "0.1.0"
__all__ = ["RlcastError", "__version__"]
