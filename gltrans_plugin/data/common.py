"""The training / test image set: fast-reid's ``CommDataset`` with one clear error for an
unreadable image, or that image skipped with a warning (``DATALOADER.SKIP_CORRUPT``), once per
file however many loader worker processes meet it."""
import hashlib
import logging
import os
import shutil
import tempfile
import weakref

from fastreid.data.common import CommDataset

from ..errors import CorruptImageError

logger = logging.getLogger(__name__)

__all__ = ["CorruptImageError", "RobustCommDataset"]


def _remove_dir(path, owner_pid):
    if os.getpid() == owner_pid:  # not from a forked loader worker's copy of the dataset
        shutil.rmtree(path, ignore_errors=True)


def _placeholder_image():
    from PIL import Image

    return Image.new("RGB", (64, 128), (128, 128, 128))


class RobustCommDataset(CommDataset):
    """fast-reid's ``CommDataset`` with one clear error for an unreadable image.

    ``skip_corrupt`` False: ``CorruptImageError`` naming the file and the fix.  True: a warning
    (once per file, also across the DataLoader's worker processes, which each hold a copy of
    the dataset: a marker file per bad image in a temporary folder the workers share) and, in
    training (``relabel``), another image of the same identity in its
    place (the identity sampler's batch composition is kept); in test, a grey placeholder image
    is used, so query / gallery indices stay aligned (its matches count as misses).
    """

    def __init__(self, img_items, transform=None, relabel=True, skip_corrupt=False):
        # An item may carry a view id as a 4th field: kept apart (fast-reid's samplers unpack
        # (path, pid, camid)) and returned as "viewids" (-1 for items without one).
        img_items = list(img_items)
        self.viewids = [int(i[3]) if len(i) > 3 else -1 for i in img_items] \
            if any(len(i) > 3 for i in img_items) else None
        if self.viewids is not None:
            img_items = [tuple(i[:3]) for i in img_items]
        super().__init__(img_items, transform, relabel)
        self.skip_corrupt = bool(skip_corrupt)
        self._bad = set()
        self._warned_dir = ""  # marker files of the images warned about, shared by workers
        if self.skip_corrupt:
            self._warned_dir = tempfile.mkdtemp(prefix="gltrans-skipped-")
            weakref.finalize(self, _remove_dir, self._warned_dir, os.getpid())

    def _first_warning(self, path):
        """True the first time any process of this dataset skips ``path``."""
        if path in self._bad:
            return False
        self._bad.add(path)
        if not self._warned_dir:
            return True
        digest = hashlib.sha1(os.fsencode(path)).hexdigest()
        try:
            os.close(os.open(os.path.join(self._warned_dir, digest),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False  # another worker warned already
        except OSError:
            pass  # the folder is gone: warn rather than stay silent
        return True

    def _check_readable(self, index, error):
        """Raise CorruptImageError if item ``index``'s file cannot be read; else return."""
        from fastreid.data.data_utils import read_image

        path = self.img_items[index][0]
        try:
            read_image(path)
        except Exception as e:
            raise CorruptImageError(
                f"Cannot read image {path} ({type(e).__name__}: {e}). The file is corrupt, "
                f"truncated or not an image: replace or delete it, or set "
                f"DATALOADER.SKIP_CORRUPT True to skip unreadable images with a warning."
            ) from e
        raise error  # the image is fine: the error came from elsewhere (e.g. a transform)

    def _with_view(self, out, index):
        if self.viewids is not None:
            out["viewids"] = self.viewids[index]
        return out

    def __getitem__(self, index):
        try:
            return self._with_view(super().__getitem__(index), index)
        except Exception as e:  # noqa: BLE001  (re-raised unless the image is the cause)
            if isinstance(e, CorruptImageError):
                raise
            try:
                self._check_readable(index, e)
            except CorruptImageError as bad:
                if not self.skip_corrupt:
                    raise
                return self._skip(index, bad)

    def _skip(self, index, error):
        path = self.img_items[index][0]
        if self._first_warning(path):
            logger.warning("Skipping unreadable image (DATALOADER.SKIP_CORRUPT): %s", error)
        if not self.relabel:  # test set: keep the index, use a blank image
            item = self.img_items[index]
            img = _placeholder_image()
            if self.transform is not None:
                img = self.transform(img)
            return self._with_view({"images": img, "targets": item[1], "camids": item[2],
                                    "img_paths": item[0]}, index)
        pid = self.img_items[index][1]
        n = len(self.img_items)
        order = sorted(range(n), key=lambda j: (self.img_items[j][1] != pid, (j - index) % n))
        for j in order[1:]:
            if self.img_items[j][0] in self._bad:
                continue
            try:
                return self._with_view(super().__getitem__(j), j)
            except Exception:  # noqa: BLE001
                if self._first_warning(self.img_items[j][0]):
                    logger.warning("Skipping unreadable image (DATALOADER.SKIP_CORRUPT): %s",
                                   self.img_items[j][0])
        raise CorruptImageError(f"No readable image left in the data set (last: {path}).")
