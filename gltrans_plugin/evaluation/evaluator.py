"""``ChunkedReidEvaluator`` (``TEST.EVALUATOR chunked``): fastreid's ``ReidEvaluator`` contract,
with chunked exact ranking.

Same ``process()`` / ``evaluate()`` contract and result keys (Rank-1, Rank-5, Rank-10, mAP,
mINP, metric, in percent; TPR@FPR when ``TEST.ROC.ENABLED``), gathers predictions across
processes with ``fastreid.utils.comm`` like the original, but

* never builds the query x gallery matrix (:mod:`.ranking`, chunks of ``TEST.CHUNK_SIZE``);
* re-ranking and AQE run on CPU (:mod:`.rerank`), also chunked;
* never compiles anything into site-packages (fastreid's evaluator runs ``make`` there).
"""
import copy
import itertools
import logging
from collections import OrderedDict

import numpy as np
import torch
from fastreid.evaluation.evaluator import DatasetEvaluator
from fastreid.utils import comm

from .ranking import evaluate_ranking, rank_metrics_from_distmat, summarize
from .rerank import aqe, k_reciprocal_distance

logger = logging.getLogger(__name__)

__all__ = ["ChunkedReidEvaluator", "feature_spread"]


def feature_spread(q_feat, g_feat, q_pids, g_pids, max_query=512, max_gallery=4096, seed=0):
    """Mean cosine between query and gallery features of the same identity (``cos_pos``) and
    of different identities (``cos_neg``), and ``cos_gap`` = their difference, on a fixed
    random sample (at most ``max_query`` x ``max_gallery`` pairs, so it costs nothing next to
    the ranking).  Collapsed features (every image maps to nearly the same direction) show
    ``cos_neg`` near 1 and a gap near 0.  Empty dict without a same- or different-identity pair.
    """
    g = torch.Generator().manual_seed(seed)
    qi = torch.randperm(len(q_feat), generator=g)[:max_query]
    gi = torch.randperm(len(g_feat), generator=g)[:max_gallery]
    q = torch.nn.functional.normalize(q_feat[qi].float(), dim=1)
    gf = torch.nn.functional.normalize(g_feat[gi].float(), dim=1)
    cos = q @ gf.t()
    same = torch.as_tensor(q_pids)[qi][:, None] == torch.as_tensor(g_pids)[gi][None, :]
    if not same.any() or same.all():
        return {}
    pos, neg = cos[same].mean().item(), cos[~same].mean().item()
    return {"cos_pos": pos, "cos_neg": neg, "cos_gap": pos - neg}


class ChunkedReidEvaluator(DatasetEvaluator):
    """Drop-in for ``fastreid.evaluation.ReidEvaluator(cfg, num_query, output_dir)``."""

    def __init__(self, cfg, num_query: int, output_dir=None):
        self.cfg = cfg
        self._num_query = num_query
        self._output_dir = output_dir
        self._cpu_device = torch.device("cpu")
        self._predictions = []
        self.chunk_size = int(cfg.TEST.CHUNK_SIZE)
        if self.chunk_size < 1:
            raise ValueError(f"TEST.CHUNK_SIZE must be >= 1, got {self.chunk_size}")
        dev = str(cfg.TEST.EVAL_DEVICE)
        if dev.startswith("cuda") and not torch.cuda.is_available():
            logger.warning("TEST.EVAL_DEVICE=%s but CUDA is unavailable; ranking on CPU", dev)
            dev = "cpu"
        self.device = torch.device(dev)

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        self._predictions.append({
            "feats": outputs.to(self._cpu_device, torch.float32),
            "pids": inputs["targets"].to(self._cpu_device),
            "camids": inputs["camids"].to(self._cpu_device),
        })

    def _collect(self):
        """All predictions as one N x D tensor (one copy; the per-batch list is released)."""
        if comm.get_world_size() > 1:
            comm.synchronize()
            predictions = comm.gather(self._predictions, dst=0)
            predictions = list(itertools.chain(*predictions))
            if not comm.is_main_process():
                return None
        else:
            predictions = self._predictions
        if not predictions:
            raise ValueError("ChunkedReidEvaluator.evaluate() called before any process()")
        n = sum(p["feats"].shape[0] for p in predictions)
        feats = torch.empty(n, predictions[0]["feats"].shape[1], dtype=torch.float32)
        pids = torch.cat([p["pids"].reshape(-1) for p in predictions]).numpy()
        camids = torch.cat([p["camids"].reshape(-1) for p in predictions]).numpy()
        s = 0
        for i in range(len(predictions)):
            f = predictions[i]["feats"]
            feats[s: s + f.shape[0]] = f
            s += f.shape[0]
            predictions[i] = None  # drop the batch as soon as it is copied
        self._predictions = []
        return feats, pids, camids

    def evaluate(self):
        collected = self._collect()
        if collected is None:
            return {}
        features, pids, camids = collected
        nq = self._num_query
        if not 0 < nq < len(features):
            raise ValueError(f"num_query={nq} but {len(features)} features were processed")
        q_feat, g_feat = features[:nq], features[nq:]
        q_pids, g_pids, q_camids, g_camids = pids[:nq], pids[nq:], camids[:nq], camids[nq:]
        test = self.cfg.TEST
        metric = test.METRIC
        self._results = OrderedDict()
        self.feature_stats = feature_spread(q_feat, g_feat, q_pids, g_pids)
        if self.feature_stats:
            st = self.feature_stats
            log = logger.warning if st["cos_gap"] < 0.01 else logger.info
            log("Test features: mean cosine query-gallery %.4f for the same identity, %.4f for "
                "different identities (gap %.4f%s)", st["cos_pos"], st["cos_neg"],
                st["cos_gap"], "; collapsed: identities are not separated" if
                st["cos_gap"] < 0.01 else "")

        if test.AQE.ENABLED:
            logger.info("Test with AQE setting")
            q_feat, g_feat = aqe(q_feat, g_feat, test.AQE.QE_TIME, test.AQE.QE_K,
                                 test.AQE.ALPHA, chunk_size=self.chunk_size)
        if test.RERANK.ENABLED:
            logger.info("Test with rerank setting (CPU, chunked)")
            dist_fn = k_reciprocal_distance(q_feat, g_feat, k1=test.RERANK.K1,
                                            k2=test.RERANK.K2, lambda_value=test.RERANK.LAMBDA,
                                            metric=metric)
            m = rank_metrics_from_distmat(dist_fn, q_pids, g_pids, q_camids, g_camids,
                                          chunk_size=self.chunk_size, progress=True)
        else:
            m = evaluate_ranking(q_feat, g_feat, q_pids, g_pids, q_camids, g_camids,
                                 metric=metric, chunk_size=self.chunk_size, device=self.device,
                                 progress=True, inplace=True)  # features are our own copy
        self._results.update(summarize(m))
        logger.info("Evaluated %d of %d queries (others have no valid match)", m["num_valid"], nq)

        if test.ROC.ENABLED:
            self._roc(q_feat, g_feat, q_pids, g_pids, q_camids, g_camids, metric)
        return copy.deepcopy(self._results)

    def _roc(self, q_feat, g_feat, q_pids, g_pids, q_camids, g_camids, metric):
        # fastreid's ROC needs the full matrix; kept for parity, warned about at scale.
        from fastreid.evaluation.roc import evaluate_roc
        from fastreid.utils.compute_dist import build_dist
        from sklearn import metrics

        if len(q_feat) * len(g_feat) > 5e7:
            logger.warning("TEST.ROC builds a %d x %d matrix (fastreid's ROC code)",
                           len(q_feat), len(g_feat))
        dist = build_dist(q_feat, g_feat, metric)
        scores, labels = evaluate_roc(dist, q_pids, g_pids, q_camids, g_camids)
        fprs, tprs, _ = metrics.roc_curve(labels, scores)
        for fpr in [1e-4, 1e-3, 1e-2]:
            ind = np.argmin(np.abs(fprs - fpr))
            self._results["TPR@FPR={:.0e}".format(fpr)] = tprs[ind]
