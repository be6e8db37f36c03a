"""The training / test image set: fast-reid's ``CommDataset`` with one clear error for an
unreadable image, or that image skipped with a warning (``DATALOADER.SKIP_CORRUPT``)."""
import logging

from fastreid.data.common import CommDataset

from ..errors import CorruptImageError

logger = logging.getLogger(__name__)

__all__ = ["CorruptImageError", "RobustCommDataset"]


def _placeholder_image():
    from PIL import Image

    return Image.new("RGB", (64, 128), (128, 128, 128))


class RobustCommDataset(CommDataset):
    """fast-reid's ``CommDataset`` with one clear error for an unreadable image.

    ``skip_corrupt`` False: ``CorruptImageError`` naming the file and the fix.  True: a warning
    (once per file) and, in training (``relabel``), another image of the same identity in its
    place (the identity sampler's batch composition is kept); in test, a grey placeholder image
    is used, so query / gallery indices stay aligned (its matches count as misses).
    """

    def __init__(self, img_items, transform=None, relabel=True, skip_corrupt=False):
        super().__init__(img_items, transform, relabel)
        self.skip_corrupt = bool(skip_corrupt)
        self._bad = set()

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

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
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
        if path not in self._bad:
            self._bad.add(path)
            logger.warning("Skipping unreadable image (DATALOADER.SKIP_CORRUPT): %s", error)
        if not self.relabel:  # test set: keep the index, use a blank image
            item = self.img_items[index]
            img = _placeholder_image()
            if self.transform is not None:
                img = self.transform(img)
            return {"images": img, "targets": item[1], "camids": item[2], "img_paths": item[0]}
        pid = self.img_items[index][1]
        n = len(self.img_items)
        order = sorted(range(n), key=lambda j: (self.img_items[j][1] != pid, (j - index) % n))
        for j in order[1:]:
            if self.img_items[j][0] in self._bad:
                continue
            try:
                return super().__getitem__(j)
            except Exception:  # noqa: BLE001
                self._bad.add(self.img_items[j][0])
                logger.warning("Skipping unreadable image (DATALOADER.SKIP_CORRUPT): %s",
                               self.img_items[j][0])
        raise CorruptImageError(f"No readable image left in the data set (last: {path}).")
