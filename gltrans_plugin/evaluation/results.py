"""An evaluation's results by dataset, and into fast-reid's event storage."""
import collections.abc

__all__ = ["per_dataset_results", "put_eval_results"]


def per_dataset_results(results, test_sets):
    """An evaluation's results as ``{dataset: {metric: value}}`` whatever the number of test
    sets: fast-reid's ``DefaultTrainer.test`` returns one set's metrics directly
    (``{"Rank-1": ..}``) and several as ``{dataset: {metric: ..}}``.  ``test_sets``:
    cfg.DATASETS.TESTS.  Results it cannot name a set for are returned unchanged."""
    if not results or len(test_sets) != 1:
        return results
    if all(isinstance(v, collections.abc.Mapping) for v in results.values()):
        return results
    return {test_sets[0]: results}


def put_eval_results(storage, results, test_sets):
    """Put an evaluation's results into fast-reid's EventStorage at its current iteration, as
    ``<dataset>/<metric>`` scalars (``Market1501/Rank-1``), the keys EvalHook uses."""
    from fastreid.evaluation.testing import flatten_results_dict

    flat = flatten_results_dict(per_dataset_results(results, tuple(test_sets)) or {})
    storage.put_scalars(**{k: float(v) for k, v in flat.items()}, smoothing_hint=False)
