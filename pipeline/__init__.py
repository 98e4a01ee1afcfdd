"""vidret: an offline video-text retrieval pipeline (decode -> encode -> index)."""

from pipeline.errors import VidretError

__version__ = "0.1.0"
__all__ = ["VidretError", "__version__"]
