"""Grain input pipeline: ArrayRecord shards -> batches of LocCa's three tasks.

  record indices -> seeded global shuffle (reshuffled every epoch) -> repeat -> (global index,
  record index) -> shard by process [i::n] -> group B per batch -> one BatchTransform per batch:
  read + parse + decode/augment/resize + task formatting of each example (rng from (seed, global
  index), as a per-example RandomMap would draw) -> iterator [-> multiprocess prefetch]

One Grain element is one batch: Grain's per-element costs (dataset wrappers, source metrics,
rng state, pytree stacking) are paid once per batch, and the batches are identical to those of the
per-example pipeline make_examples(...).batch(B) (tests/test_data_pipeline.py checks it).
Per example the transform reads only the fields it needs (record.decode_training_fields; set
data.check_records for the full validating decode), decodes JPEGs with OpenCV where that gives
Pillow's exact pixels (preprocess.decode_jpeg_fast) and formats all tasks into one token block
(tasks.format_example); tests/benchmarks/README.md (loader_throughput) has what each costs.

Sharding comes after the global index is fixed, so an example's randomness depends on its global
index only: the same record in the same epoch gets the same crop and region whatever the process
count, and mp_prefetch slices after batching, so the worker count (and read_threads) does not
change the batches either. Within one epoch, process i of n sees global positions i, i+n, ...:
every record once across all processes (an epoch of N records gives processes N//n or N//n + 1
examples).

Batches (numpy): "image" uint8[B, S, S, 3] (config.image_dtype="uint8", the default: a quarter of
the bytes through worker shared memory and to the device; training/model_fns.py maps it to [-1, 1]
inside the jitted step) or float32[B, S, S, 3] in config.value_range ("float32"); "{task}/inputs",
"{task}/targets" int32[B, L]; "{task}/loss_mask" float32[B, L] for every task in model.tasks.TASKS
([B, K, L] for aref and gcap with data.regions_per_task K > 1);
"has_regions" bool[B]. S = config.image_size, L = config.text_len.

The returned iterator has get_state()/set_state(); the trainer saves it with
`grain.checkpoint.CheckpointSave(it)` next to the model in the same Orbax checkpoint.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from model import tasks
from pipelines import record as record_lib
from pipelines import shards
from training import bad_records, mixture
from training import preprocess as pp


def options() -> ml_collections.ConfigDict:
    """The loader's own settings: the training config's `config.data` (see with_inputs)."""
    c = ml_collections.ConfigDict()
    c.cache_dir = ""  # local copies of gs:// shards (training/shard_cache.py); "": the temp dir
    # An undecodable record becomes an example with no loss (counted as data/bad_records); the run
    # stops with one line once bad records pass this fraction of those read (training/bad_records).
    c.max_bad_fraction = 1e-4
    c.image_dtype = "uint8"  # "uint8": [0, 255], scaled on device; "float32": value_range on host
    c.value_range = (-1.0, 1.0)  # float32 pixel range; uint8 images always map to [-1, 1]
    c.fast_resize = True  # OpenCV bilinear (pp.resize_fast); False: Pillow antialiased (= eval)
    # False: read only image/caption/boxes/phrases (record.decode_training_fields; records were
    # validated when written). True: full record.decode + validate of every example (slower, same
    # batches for valid records).
    c.check_records = False
    # "all": every task every example (paper); "sample": one task per example, drawn in
    # proportion to the task weights.
    c.task_mix = "all"
    # Rows per location task (aref, gcap) per example: K > 1 decodes K regions of each image
    # against one encoder pass ("{task}/inputs" become [B, K, L]); 1 is the paper's one region.
    c.regions_per_task = 1
    # aref's own K (0: regions_per_task): more grounding rows per encoder pass without paying for
    # as many gcap rows.
    c.aref_regions = 0
    # aref rows only from regions whose phrase names no other object of the image
    # (tasks.unambiguous_regions): "star" beside "red star" has several right boxes.
    c.aref_unambiguous = False
    c.shuffle = True  # global shuffle, reshuffled each epoch from the seed
    c.augment = ml_collections.ConfigDict()
    c.augment.crop = False  # Inception-style random resized crop (boxes clipped or dropped)
    c.augment.crop_area = (0.3, 1.0)  # crop area fraction
    c.augment.crop_ratio = (3 / 4, 4 / 3)  # crop aspect (w/h)
    c.augment.min_visible = 0.5  # a box keeps >= this fraction of its area or is dropped
    c.augment.flip = False  # horizontal flip with prob 0.5; swaps "left"/"right" in the texts
    c.augment.flip_prob = 0.5
    # Threads per process (or per worker), each computing whole batches. On a small CPU host
    # (2 cores) use no worker processes (the trainer's data.num_workers=0): OpenCV's decode
    # releases the GIL, so 2-4 threads use both cores without the workers' shared-memory copy
    # (tests/benchmarks/README.md, loader_throughput, compares the two).
    c.read_threads = 4
    c.prefetch_batches = 4  # batches each process (or worker) keeps ready or in flight
    # Named shard sets with weights, ((name, glob, weight), ...); empty: `paths` alone.
    # training/mixture.py (Grain's MapDataset.mix; batches gain "source" int32[B]).
    c.mixture = ()
    return c


def with_inputs(settings: ml_collections.ConfigDict, *, paths: str | Sequence[str],
                image_size: int, text_len: int,
                task_weights: Mapping[str, float]) -> ml_collections.ConfigDict:
    """The loader's whole config: its own `settings` (options()) plus what it takes from the rest
    of a training config.

    paths: glob (or list of globs) of ArrayRecord shards, local or gs://; image_size: output side
    S (images are squashed to S x S); text_len: L, the decoder length (tokens per task, BOS..EOS
    minus one); task_weights: {task: weight}, task_mix="sample" draws tasks by them. The trainer
    fills them from data.train_glob, model.image_size, model.max_len and loss.task_weights
    (trainer.data_config), so each is set in one place.
    """
    c = ml_collections.ConfigDict(settings.to_dict())
    c.paths = paths
    c.image_size = int(image_size)
    c.text_len = int(text_len)
    c.task_weights = ml_collections.ConfigDict({k: float(v) for k, v in task_weights.items()})
    return c


def default_config() -> ml_collections.ConfigDict:
    """A standalone loader's whole config (tests, benchmarks): options() with default inputs."""
    return with_inputs(options(), paths="", image_size=224, text_len=64,
                       task_weights={"cap": 1.0, "aref": 1.0, "gcap": 1.0})


class DataError(ValueError):
    """Bad data configuration (e.g. a glob that matches nothing)."""


def expand_paths(patterns: str | Sequence[str]) -> list[str]:
    """Globs (local or cloud; a comma-separated string or a list) -> sorted shard paths."""
    try:
        return shards.expand(patterns)
    except shards.NoShards as e:
        raise DataError(f"{e}; check data.paths") from None


class ExampleTransform(grain.transforms.RandomMap):
    """Serialized record -> one training example (module-level and picklable for mp_prefetch)."""

    def __init__(self, config: ml_collections.ConfigDict, tokenizer: Any, *, train: bool = True):
        aug = config.augment
        self.tokenizer = tokenizer
        self.text_len = int(config.text_len)
        self.task_mix = str(config.task_mix)
        self.task_weights = {k: float(v) for k, v in dict(config.task_weights).items()}
        self.regions_per_task = int(config.get("regions_per_task", 1))
        if self.regions_per_task < 1:
            raise DataError(f"data.regions_per_task must be >= 1, got {self.regions_per_task}")
        self.aref_regions = int(config.get("aref_regions", 0))
        if self.aref_regions < 0:
            raise DataError(f"data.aref_regions must be >= 0 (0: regions_per_task), got "
                            f"{self.aref_regions}")
        self.aref_unambiguous = bool(config.get("aref_unambiguous", False))
        size = int(config.image_size)
        ops: list[Any] = []
        min_side = size
        if train and aug.crop:
            ops.append(pp.RandomResizedCrop(tuple(aug.crop_area), tuple(aug.crop_ratio),
                                            float(aug.min_visible)))
            # Decode big enough that the smallest crop is still >= size pixels on its short side,
            # at the most elongated aspect: a crop of area fraction a and aspect r (w/h) of a
            # square image has short side sqrt(a / max(r, 1/r)) of the image's.
            elongation = max(float(aug.crop_ratio[1]), 1.0 / float(aug.crop_ratio[0]))
            min_side = math.ceil(size / math.sqrt(float(aug.crop_area[0]) / elongation))
        # Without a crop the resize is fused into the decode (pp.decode_resized).
        self.fused_resize = size if not (train and aug.crop) else None
        self.fast_resize = bool(config.fast_resize)
        if self.fused_resize is None:
            ops.append(pp.Resize(size, fast=self.fast_resize))
        if train and aug.flip:
            ops.append(pp.RandomFlip(float(aug.flip_prob), swap_words=True))
        dtype, value_range = str(config.image_dtype), tuple(map(float, config.value_range))
        if dtype == "float32":
            ops.append(pp.ValueRange(*value_range))
        elif dtype != "uint8":
            raise DataError(f"data.image_dtype must be 'uint8' or 'float32', got {dtype!r}")
        elif value_range != (-1.0, 1.0):
            raise DataError("data.value_range applies to float32 images only (uint8 ones are "
                            "mapped to [-1, 1] in the train step); set data.image_dtype=float32")
        self.ops = tuple(ops)
        self.min_side = min_side
        self.check_records = bool(config.get("check_records", False))

    def random_map(self, element: bytes, rng: np.random.Generator) -> dict[str, Any]:
        try:
            if self.check_records:
                fields = record_lib.TrainingFields.from_record(record_lib.decode(element))
            else:
                fields = record_lib.decode_training_fields(element)
            if self.fused_resize is not None:
                image = pp.decode_resized(fields.image, self.fused_resize, self.fast_resize)
            else:
                image = pp.decode_image(fields.image, self.min_side)
        except Exception as e:  # noqa: BLE001 - any undecodable record: skipped, counted
            return bad_records.empty_example(self, rng, f"{type(e).__name__}: {e}")
        features = {"image": image, "boxes": fields.boxes, "phrases": fields.phrases,
                    "caption": fields.caption}
        if self.ops:
            features = pp.apply(self.ops, features, rng)
        out = tasks.format_example(
            self.tokenizer, rng, caption=features["caption"], boxes=features["boxes"],
            phrases=features["phrases"], max_len=self.text_len, task_mix=self.task_mix,
            task_weights=self.task_weights, regions_per_task=self.regions_per_task,
            aref_unambiguous=self.aref_unambiguous, aref_regions=self.aref_regions,
        )
        out["image"] = features["image"]
        return bad_records.mark_good(out)


class _ThreadRngs:
    """Grain's per-example generator for index i, as RandomMap makes it, one Generator per thread.

    RandomMap resets a Philox(seed) generator's counter to [0, 0, 0, i] for example i (Grain
    0.2.18, map._reset_rng_state); this does the same reset with one reused state dict (~1 us
    instead of Grain's ~4.5 us per example). Read threads run batches concurrently: each thread
    keeps its own generator.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._local = threading.local()

    def __reduce__(self):  # threading.local does not pickle; workers build their own
        return (_ThreadRngs, (self.seed,))

    def at(self, index: int) -> np.random.Generator:
        local = self._local
        if not hasattr(local, "rng"):
            local.rng = np.random.Generator(np.random.Philox(self.seed))
            local.state = local.rng.bit_generator.state
            local.counter, local.state["buffer"] = np.zeros(4, np.uint64), np.zeros(4, np.uint64)
            local.state["buffer_pos"], local.state["has_uint32"], local.state["uinteger"] = 4, 0, 0
        local.counter[3] = index  # the setter copies the state, so the arrays can be reused
        local.state["state"]["counter"] = local.counter
        local.rng.bit_generator.state = local.state
        return local.rng


class BatchTransform:
    """[(global index, record index)] -> one batch (Grain batch_fn; picklable for workers).

    Reads each record from the source (directly: Grain's per-element source wrapper costs ~8 us
    on top of the ~11 us read), runs ExampleTransform on it with the rng RandomMap would give
    that global index, and writes the results into [B, ...] arrays: the image into a
    preallocated batch array, the text fields stacked per key.
    """

    def __init__(self, source: Any, example: ExampleTransform, rng_seed: int,
                 source_offsets: np.ndarray | None = None):
        self.source = source
        self.example = example
        self.rngs = _ThreadRngs(int(rng_seed))
        self.source_offsets = source_offsets  # a mixture's first record of each source

    def __call__(self, items: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
        # All reads first, then all decodes: interleaving each read (a pread per record) with
        # the decodes costs more CPU per example (tests/benchmarks/README.md, loader_throughput).
        elements = [self.source[record] for _, record in items]
        images = None
        texts = []
        for row, ((index, _), element) in enumerate(zip(items, elements, strict=True)):
            out = self.example.random_map(element, self.rngs.at(index))
            image = out.pop("image")
            if images is None:
                images = np.empty((len(items), *image.shape), image.dtype)
            images[row] = image
            texts.append(out)
        batch = {k: np.stack([t[k] for t in texts]) for k in texts[0]}
        batch["image"] = images
        if self.source_offsets is not None:
            batch["source"] = mixture.source_of([r for _, r in items], self.source_offsets)
        return batch


def _resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # Only when asked: jax.distributed.initialize() must run before this.

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} is not in [0, {process_count})")
    return process_index, process_count


def _record_indices(
    config: ml_collections.ConfigDict, *, seed: int, num_epochs: int | None, train: bool,
) -> tuple[grain.sources.ArrayRecordDataSource, grain.MapDataset, int]:
    """(source, (global index, record index) pairs in global order, per-example rng seed).

    The same graph as make_examples with the records replaced by their indices: a shuffle's
    permutation depends on the seed, its depth below ds.seed and the length only, so the order is
    the same. The seed is the one Grain gives a `random_map` at this point of the graph, so
    BatchTransform draws exactly what make_examples' RandomMap draws.
    """
    source = grain.sources.ArrayRecordDataSource(expand_paths(config.paths))
    ds = grain.MapDataset.range(len(source)).seed(seed)
    if train and config.shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs).map_with_index(_with_index)
    # Private in Grain 0.2.18; tests/test_data_pipeline.py checks the batches against
    # make_examples, whose RandomMap gets its seed from Grain itself.
    return source, ds, int(ds._default_seed)  # noqa: SLF001


def _with_index(index: int, record: int) -> tuple[int, int]:
    return index, record


def mixture_parts(config: ml_collections.ConfigDict) -> list[mixture.Part]:
    """config.mixture checked, globs expanded ([] without a mixture); DataError names the fix."""
    return mixture.parts(config, expand_paths, DataError)


def _mixture_indices(
    config: ml_collections.ConfigDict, parts: list[mixture.Part], *, seed: int,
    num_epochs: int | None, train: bool,
) -> tuple[grain.sources.ArrayRecordDataSource, grain.MapDataset, int, np.ndarray]:
    """_record_indices for a mixture: one source over every part's shards, its record indices
    mixed by weight (training/mixture.py); also each part's first record index."""
    source = grain.sources.ArrayRecordDataSource([p for part in parts for p in part.paths])
    sizes = [len(grain.sources.ArrayRecordDataSource(list(part.paths))) for part in parts]
    ds, offsets = mixture.mixed_indices(parts, sizes, seed=seed, num_epochs=num_epochs,
                                        shuffle=bool(train and config.shuffle))
    ds = ds.map_with_index(_with_index)
    return source, ds, int(ds._default_seed), offsets  # noqa: SLF001 (see _record_indices)


def make_examples(
    config: ml_collections.ConfigDict, tokenizer: Any, *, seed: int, process_index: int,
    process_count: int, num_epochs: int | None = None, train: bool = True,
) -> grain.MapDataset:
    """This process's examples, one Grain element each (unbatched MapDataset; None: forever).

    The reference the batched loader is tested against: make_train_iter's batches are these
    examples, batched, computed one batch per Grain element (BatchTransform).
    """
    paths = expand_paths(config.paths)
    ds = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(paths)).seed(seed)
    if train and config.shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs)
    ds = ds.random_map(ExampleTransform(config, tokenizer, train=train))
    return ds[process_index::process_count]


def make_batches(
    config: ml_collections.ConfigDict, tokenizer: Any, *, batch_size: int, seed: int,
    process_index: int, process_count: int, num_epochs: int | None = None, train: bool = True,
    drop_remainder: bool = True,
) -> grain.MapDataset:
    """This process's batches: make_examples(...).batch(batch_size), one Grain element per batch.

    Records are sharded and grouped first; BatchTransform then parses, decodes and formats the
    whole batch in one call, with each example's rng derived from its global index as the
    RandomMap does, so the batches are identical. Grain's per-element costs (dataset wrappers,
    rng state, pytree stacking) are paid once per batch instead of once per example.
    """
    parts, offsets = mixture_parts(config), None
    if parts:
        source, ds, rng_seed, offsets = _mixture_indices(config, parts, seed=seed,
                                                         num_epochs=num_epochs, train=train)
    else:
        source, ds, rng_seed = _record_indices(config, seed=seed, num_epochs=num_epochs,
                                               train=train)
    transform = BatchTransform(source, ExampleTransform(config, tokenizer, train=train), rng_seed,
                               offsets)
    ds = ds[process_index::process_count]
    return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=transform)


def _ensure_absl_flags() -> None:
    # Grain 0.2.18's worker processes read absl flags once JAX is installed; a library caller
    # (tests, notebooks) has not parsed them.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_iter(
    data_config: ml_collections.ConfigDict, tokenizer: Any, *, global_batch_size: int | None = None,
    per_process_batch: int | None = None, seed: int = 0, process_index: int | None = None,
    process_count: int | None = None, num_workers: int = 0, num_epochs: int | None = None,
) -> grain.DatasetIterator:
    """Training batches for this process. Give exactly one of global_batch_size / per_process_batch.

    Close the iterator (`it.close()`) when num_workers > 0 to stop the worker processes.
    """
    index, count = _resolve_process(process_index, process_count)
    if (global_batch_size is None) == (per_process_batch is None):
        raise DataError("give exactly one of global_batch_size and per_process_batch")
    if per_process_batch is None:
        if global_batch_size % count:
            raise DataError(f"global batch {global_batch_size} is not divisible by {count} processes")
        per_process_batch = global_batch_size // count
    ds = make_batches(data_config, tokenizer, batch_size=per_process_batch, seed=seed,
                      process_index=index, process_count=count, num_epochs=num_epochs)
    return iter(_to_iter(ds, data_config, num_workers))


def make_eval_iter(
    data_config: ml_collections.ConfigDict, tokenizer: Any, *, batch_size: int, seed: int = 0,
    process_index: int | None = None, process_count: int | None = None, num_workers: int = 0,
) -> grain.DatasetIterator:
    """One pass in file order, no augmentation, last batch kept (may be smaller)."""
    index, count = _resolve_process(process_index, process_count)
    ds = make_batches(data_config, tokenizer, batch_size=batch_size, seed=seed,
                      process_index=index, process_count=count, num_epochs=1, train=False,
                      drop_remainder=False)
    return iter(_to_iter(ds, data_config, num_workers))


_MIN_SHM_BYTES = 1 << 16  # arrays below this cross from workers pickled, not in shared memory


def _to_iter(ds: grain.MapDataset, config: ml_collections.ConfigDict, num_workers: int):
    read = grain.ReadOptions(num_threads=int(config.read_threads),
                             prefetch_buffer_size=int(config.prefetch_batches))
    it_ds = ds.to_iter_dataset(read)
    if num_workers > 0:
        _ensure_absl_flags()
        # Only the image batch goes through shared memory; the ten small [B, L] text arrays are
        # pickled with the batch. Grain's default (min_shm_size=0) makes one shared-memory segment
        # per array per batch, whose create/map/unlink cost more than copying 8 KB
        # (tests/benchmarks/README.md has the figures).
        # The iterator and its checkpointed state are the parent's, unchanged.
        options = grain.experimental.DatasetOptions(min_shm_size=_MIN_SHM_BYTES)
        it_ds = grain.experimental.WithOptionsIterDataset(it_ds, options)
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it_ds
