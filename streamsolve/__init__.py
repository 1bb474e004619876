"""streamsolve: single-layer softmax models without backpropagation.

Stream a corpus once into sparse co-occurrence counts, then turn them into the model's
explicit weights (see DESIGN: sparse + rank-one weight blocks, optional calibration).
"""

__version__ = "0.1.0"

from .api import count, evaluate, export_counts, finalize, info, solve, verify  # noqa: E402
from .core.counting import CountConfig, Counts, count_token_documents  # noqa: E402
from .incremental import Model  # noqa: E402
from .language_model import LanguageModel  # noqa: E402
from .store.model_store import ModelStore  # noqa: E402
from .core.weights import ExplicitWeights, finalize as finalize_counts  # noqa: E402

__all__ = [
    "CountConfig", "Counts", "ExplicitSoftmaxClassifier", "ExplicitWeights", "LanguageModel", "Model", "ModelStore",
    "count", "count_token_documents", "evaluate", "export_counts", "finalize",
    "finalize_counts", "info", "solve", "verify", "__version__",
]


def __getattr__(name):
    # The classifier pulls in nothing heavy, but keep it lazy so the LM path stays lean.
    if name == "ExplicitSoftmaxClassifier":
        from .classifier.estimator import ExplicitSoftmaxClassifier

        return ExplicitSoftmaxClassifier
    raise AttributeError(name)
