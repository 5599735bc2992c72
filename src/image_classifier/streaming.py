"""The streaming data path: images stay encoded in the dataset's own files and are decoded per sample.

`EncodedImages` is a map-style torch Dataset over one split of a `datasets.Dataset` whose image column is
left undecoded (Arrow/parquet rows hold the encoded bytes, an image folder's rows hold paths; both are
memory-mapped, so forked DataLoader workers share them and memory does not grow with the number of
images). Item i is read by `images.read_image` (the decoder of the app and the resident path), then
transformed (transforms.py) into uint8 (C, S, S). `StreamedImages` is the train split under --streaming
(datasets' streaming mode): read in order, shuffled in a buffer, one part per process, decoded the same way.

An image that cannot be decoded is not a crash in a worker: the item comes back as a blank image with label
`SKIPPED` (-1) and one warning names the row; training drops such rows from its batches
(`collate_dropping_skipped`) and evaluation from its predictions (engine.predict), and both count them.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from .images import CorruptImageWarning, ImageError, image_tensor, read_image

__all__ = ["SKIPPED", "EncodedImages", "StreamedImages", "KeyFilter", "image_key", "collate_dropping_skipped"]

SKIPPED = -1                    # the label of an item whose image could not be decoded


class EncodedImages(Dataset):
    """Row i of `split` (columns image, label) -> (uint8 (C, S, S), int label), decoded on each access.

    `rows` maps positions to `split` rows (for `describe`); `labels` is the int64 label tensor (N,);
    `transform` maps the decoded uint8 (C, H, W) image to (C, S, S); `min_short_side`, when set, lets JPEGs
    decode at a reduced scale that keeps at least that many pixels on the shorter side.
    """

    def __init__(self, split, labels: np.ndarray, num_channels: int, image_size: int, transform: Callable,
                 describe: Callable[[int, dict], str], min_short_side: Optional[int] = None, strict: bool = False):
        import datasets

        self.split = split.cast_column("image", datasets.Image(decode=False)).select_columns(["image"])
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.num_channels, self.image_size = num_channels, image_size
        self.transform = transform
        self.describe = describe               # (position, undecoded value) -> "train row 17 (path)"
        self.min_short_side = min_short_side
        self.strict = strict                   # --strict_images: an undecodable image stops the run
    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        value = self.split[int(index)]["image"]
        return self.decode(value, int(self.labels[index]), lambda: self.describe(int(index), value))

    def decode(self, value, label: int, where: Callable[[], str]) -> tuple[torch.Tensor, int]:
        """(uint8 (C, S, S), label) of one undecoded image value; a blank image and SKIPPED where it cannot be
        decoded (`where()` names it in the warning), or an ImageError under --strict_images."""
        try:
            image = read_image(value, self.num_channels, min_short_side=self.min_short_side)[0]
            return self.transform(image_tensor(image)).contiguous(), label
        except Exception as error:              # noqa: BLE001 - PIL raises many types; one skipped row, not a crash
            if self.strict:
                raise ImageError(f"Image {where()} cannot be decoded ({type(error).__name__}: {error}). Remove or "
                                 "replace the file, or drop --strict_images to skip undecodable images with a "
                                 "warning.") from error
            warnings.warn(f"Skipped image {where()}: {type(error).__name__}: {str(error)[:160]}", CorruptImageWarning,
                          stacklevel=3)
            blank = torch.zeros((self.num_channels, self.image_size, self.image_size), dtype=torch.uint8)
            return blank, SKIPPED

    def with_transform(self, transform: Callable, min_short_side: Optional[int] = None) -> "EncodedImages":
        """The same rows under another transform (the evaluation view of the training split)."""
        view = EncodedImages.__new__(EncodedImages)
        view.__dict__.update(self.__dict__, transform=transform, min_short_side=min_short_side)
        return view

    def images_at(self, positions: Sequence[int]) -> torch.Tensor:
        """uint8 (n, C, S, S) of the given positions (a few: plots, examples, the whitening stem's sample)."""
        items = [self[int(p)][0] for p in positions]
        return torch.stack(items) if items else torch.empty((0, self.num_channels, self.image_size,
                                                             self.image_size), dtype=torch.uint8)


def image_key(value) -> str:
    """What tells an undecoded image value apart (its encoded bytes' digest, else its path), whichever part of
    a stream it arrives in."""
    import hashlib

    data = value.get("bytes") if isinstance(value, dict) else None
    return hashlib.blake2b(data, digest_size=16).hexdigest() if data else str((value or {}).get("path"))


class KeyFilter:
    """A stream filter (picklable, for loader workers): rows whose image is one of `keys` (image_key), or with
    `keep=False` none of them. Unlike skip() and take(), it picks the same rows however datasets splits the
    stream between processes and workers."""

    def __init__(self, keys, keep: bool):
        self.keys, self.keep = frozenset(keys), keep

    def __call__(self, row) -> bool:
        return (image_key(row["image"]) in self.keys) == self.keep


class StreamedImages(IterableDataset):
    """The train split under --streaming: a datasets.IterableDataset (columns image, undecoded, and label) read in
    order, shuffled in a buffer of `buffer_size` rows with the seed + epoch, split between processes with
    `split_dataset_by_node` (and between a process's loader workers by datasets), each row decoded and transformed
    by `decoder` (the EncodedImages of the stream's first rows, with the training transform).

    len() is the rows of the whole split (all processes); `labels` (N,) are theirs, from the label pass. Item i
    (the augmentation preview, the size of an input) is row i of those first rows.
    """

    def __init__(self, stream, labels: np.ndarray, decoder: EncodedImages, buffer_size: int, seed: int):
        self.stream, self.decoder = stream, decoder
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.num_channels, self.image_size = decoder.num_channels, decoder.image_size
        self.buffer_size, self.seed = buffer_size, seed
        self.rank, self.world_size, self.epoch = 0, 1, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.decoder[index]

    def shard(self, rank: int, world_size: int) -> "StreamedImages":
        """The part process `rank` of `world_size` reads (disjoint from the others')."""
        view = StreamedImages.__new__(StreamedImages)
        view.__dict__.update(self.__dict__, rank=rank, world_size=world_size)
        return view

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def worker_buffer_size(self) -> int:
        """Rows of this loader worker's shuffle buffer: its share of `buffer_size`. datasets gives every worker a
        buffer of its own, so 10,000 rows in each of 16 workers would hold 160,000 photos (about 17 GB of
        ImageNet's) per process."""
        info = torch.utils.data.get_worker_info()
        return max(1, self.buffer_size // (info.num_workers if info is not None else 1))

    def __iter__(self):
        from datasets.distributed import split_dataset_by_node

        stream = self.stream.shuffle(seed=self.seed, buffer_size=self.worker_buffer_size())
        stream.set_epoch(self.epoch)
        stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)
        for i, row in enumerate(stream):
            value = row["image"]
            path = f" ({value['path']})" if isinstance(value, dict) and value.get("path") else ""
            yield self.decoder.decode(value, int(row["label"]),
                                      lambda: f"train (row {i} of process {self.rank}'s stream, epoch {self.epoch + 1}){path}")


def collate_dropping_skipped(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loader's collate: stack (uint8 (B, C, S, S), int64 (B,)) without undecodable images (a batch
    of nothing but undecodable images comes back empty, and the training loop passes over it)."""
    kept = [(image, label) for image, label in batch if label != SKIPPED]
    if not kept:
        return torch.empty((0, *batch[0][0].shape), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return torch.stack([image for image, _ in kept]), torch.tensor([label for _, label in kept], dtype=torch.int64)
