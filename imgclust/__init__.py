"""imgclust: cluster any folder of unlabelled images with pretrained encoders, and score the result.

The public API mirrors the command line, one function per stage::

    import imgclust
    imgclust.embed(["./photos"], encoder="effnet-lite0", cache="photos.h5")
"""

__version__ = "0.1.0.dev0"

from .assign import assign  # noqa: E402
from .cluster import ClusterRun, cluster, load_run  # noqa: E402
from .clusterers import create_clusterer, list_clusterers  # noqa: E402
from .embed import EmbedSummary, embed  # noqa: E402
from .encoders import create_encoder, list_encoders  # noqa: E402
from .errors import ImgclustError, UsageError  # noqa: E402
from .export import export  # noqa: E402
from .pipeline import run_pipeline  # noqa: E402
from .reduce import reduce  # noqa: E402
from .score import score  # noqa: E402
from .select import Selection, choose_n_clusters  # noqa: E402

__all__ = ["ClusterRun", "EmbedSummary", "ImgclustError", "Selection", "UsageError", "__version__", "assign",
           "choose_n_clusters", "cluster", "create_clusterer", "create_encoder", "embed", "export", "list_clusterers", "list_encoders", "load_run",
           "reduce", "run_pipeline", "score"]
