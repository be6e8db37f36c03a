"""Evaluation: chunked exact ranking, CPU re-ranking / AQE, flip-test inference, retrieval index."""
from .evaluator import ChunkedReidEvaluator  # noqa: F401
from .index import RetrievalIndex, extract_features  # noqa: F401
from .inference import flip_features, inference_on_dataset  # noqa: F401
from .ranking import evaluate_ranking, rank_metrics_from_distmat, summarize  # noqa: F401
from .rerank import aqe, k_reciprocal_distance  # noqa: F401
