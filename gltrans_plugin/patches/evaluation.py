"""Runtime patches of fast-reid's evaluation: the python ranking without Cython, re-ranking on the
CPU, flip test normalised once, and every evaluation's results stored and written per dataset."""
import functools
import logging

from ..compat import fix
from ..devices import cuda_available
from ..data.validation import VAL_NAME, val_enabled
from ..evaluation.results import per_dataset_results

logger = logging.getLogger(__name__)


@fix
def no_cython_compile_exit():
    # fastreid/evaluation/reid_evaluation.py: ReidEvaluator.__init__ runs `make` on the Cython
    # rank module the wheel does not ship (in site-packages) and calls sys.exit(1) when that
    # fails: training dies silently after the first epoch.  Use the python ranking instead.
    from fastreid.evaluation import reid_evaluation

    def _compile_dependencies(self):
        try:
            from fastreid.evaluation.rank_cylib.rank_cy import evaluate_cy  # noqa: F401
        except ImportError:
            logger.info("fastreid's Cython rank module is not built; using its python ranking.")

    reid_evaluation.ReidEvaluator._compile_dependencies = _compile_dependencies


@fix
def rerank_on_cpu():
    # fastreid/utils/compute_dist.py: compute_jaccard_distance() calls `features.cuda()` and
    # faiss-GPU for every search_option < 3 -> crashes on CPU.  Use the faiss-CPU path there.
    from fastreid.utils import compute_dist

    original = compute_dist.compute_jaccard_distance
    if getattr(original, "_gltrans_patched", False):
        return

    @functools.wraps(original)
    def compute_jaccard_distance(features, k1=20, k2=6, search_option=0, fp16=False):
        import faiss

        if not (cuda_available() and features.is_cuda and faiss.get_num_gpus() > 0):
            search_option = 3
        return original(features, k1=k1, k2=k2, search_option=search_option, fp16=fp16)

    compute_jaccard_distance._gltrans_patched = True
    compute_dist.compute_jaccard_distance = compute_jaccard_distance


@fix
def flip_test_single_normalisation():
    # fastreid/evaluation/evaluator.py: inference_on_dataset() flips inputs["images"] after the
    # model (Baseline.preprocess_image) has normalised that tensor in place, so the flipped
    # pass normalises twice and the flip-test features are wrong.  DefaultTrainer.test uses
    # ours (gltrans_plugin/evaluation/inference.py): each pass gets its own copy of the images.
    import fastreid.engine.defaults as defaults

    from ..evaluation.inference import inference_on_dataset

    defaults.inference_on_dataset = inference_on_dataset


@fix
def eval_results_per_dataset():
    # fastreid/engine/hooks.py: EvalHook puts one test set's results as `Rank-1`, `mAP` ... and
    # several sets' as `Market1501/Rank-1` ..., so a curve's key changes with DATASETS.TESTS.
    # Every evaluation's scalars are now `<dataset>/<metric>`; PeriodicCheckpointer (model_best)
    # reads `<first test set>/metric` accordingly (`Validation/metric` with a validation split).
    from fastreid.engine import hooks

    orig_init = hooks.EvalHook.__init__

    def __init__(self, eval_period, eval_function):
        def per_dataset():
            cfg = getattr(getattr(self, "trainer", None), "cfg", None)
            tests = tuple(cfg.DATASETS.TESTS) if cfg is not None else ()
            return per_dataset_results(eval_function(), tests)

        orig_init(self, eval_period, per_dataset)  # (after_train deletes it: no cycle left)

    orig_before_train = hooks.PeriodicCheckpointer.before_train

    def before_train(self):
        orig_before_train(self)
        cfg = self.trainer.cfg  # the validation split, when there is one, picks model_best
        self.metric_name = f"{VAL_NAME if val_enabled(cfg) else cfg.DATASETS.TESTS[0]}/metric"

    hooks.EvalHook.__init__ = __init__
    hooks.PeriodicCheckpointer.before_train = before_train


@fix
def eval_results_written():
    # fastreid/engine/hooks.py: EvalHook puts its results in after_epoch, at the epoch's last
    # iteration, which PeriodicWriter has written in after_step already when its period divides
    # it (and always for the last iteration); JSONWriter and TensorboardXWriter skip scalars of
    # an iteration they have written -> the accuracy is missing from metrics.json and
    # TensorBoard.  The evaluation after_train runs (EVAL_PERIOD not dividing MAX_EPOCH) is never
    # written: PeriodicWriter.after_train only closes the writers.  An epoch's last iteration is
    # now written in after_epoch (after the evaluation, as the hooks are ordered), and
    # after_train writes once more before closing.
    from fastreid.engine import hooks

    writer = hooks.PeriodicWriter
    orig_after_step, orig_after_train = writer.after_step, writer.after_train

    def after_step(self):
        per_epoch = getattr(self.trainer, "iters_per_epoch", 0)
        if per_epoch and (self.trainer.iter + 1) % per_epoch == 0:
            return  # after_epoch writes this iteration, with the evaluation results
        orig_after_step(self)

    def after_train(self):
        try:
            for w in self._writers:
                w.write()
        except Exception:  # noqa: BLE001  (never mask the error that ended the training)
            logger.warning("Writing the last metrics failed.", exc_info=True)
        orig_after_train(self)

    writer.after_step, writer.after_train = after_step, after_train
