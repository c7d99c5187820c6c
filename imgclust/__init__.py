"""imgclust: cluster any folder of unlabelled images with pretrained encoders, and score the result.

The public API mirrors the command line, one function per stage::

    import imgclust
    imgclust.embed(["./photos"], encoder="effnet-lite0", cache="photos.h5")
"""

__version__ = "0.1.0.dev0"

from .embed import EmbedSummary, embed  # noqa: E402
from .encoders import create_encoder, list_encoders  # noqa: E402
from .errors import ImgclustError, UsageError  # noqa: E402

__all__ = ["EmbedSummary", "ImgclustError", "UsageError", "__version__", "create_encoder", "embed", "list_encoders"]
