"""The training input pipeline: `tf.data` with exact on-the-fly augmentation.

TensorFlow ops only: `keras.ops` inside `tf.data.Dataset.map` fails under the
JAX backend (SPEC.md Sec. 9). A `tf.data.Dataset` is a valid `model.fit`
input on every Keras 3 backend.

Memory: each pair's input label, surgery and annotation count are packed
into one byte per voxel, so a single exact transform moves x, y and M
together, and only then is a batch decoded to float32. With augmentation
the packed volumes are kept in each of the 6 axis orders (6 bytes per voxel
and pair, 84 MiB for an Experiment-1 fold at 64^3); the 8 reversals are
applied on the fly. Nothing is materialized per augmentation variant.
"""

import importlib.util
import os

import numpy as np

# tf.data is this pipeline's engine on every Keras backend: name the extra
# that brings TensorFlow now, not a bare ModuleNotFoundError mid-training.
if importlib.util.find_spec("tensorflow") is None:
    _extra = os.environ.get("KERAS_BACKEND", "tensorflow")
    _extra = _extra if _extra in ("tensorflow", "jax", "torch") else "tensorflow"
    raise ModuleNotFoundError(
        "No module named 'tensorflow' (cm_dataset's pipeline runs on tf.data with every "
        f'Keras backend). Install it with: pip install "keras-seglosses[{_extra}]" '
        "(every backend extra brings it)",
        name="tensorflow",
    )

from cm_dataset import augment as aug
from cm_dataset.data import N_LABELS, CMData
from cm_dataset.encoding import INPUT_ENCODINGS, encode_input, input_table
from cm_dataset.splits import get_split
from keras_seglosses.multirater import staple
from keras_seglosses.rpmap import legacy_reward_penalty_targets, reward_penalty_map
from keras_seglosses.targets import pack_targets

__all__ = ["make_dataset", "make_arrays", "TARGETS", "LABELS", "INPUT_ENCODINGS", "SUBSETS"]

TARGETS = ("rpdl", "plain", "legacy")
#: What the label channel holds: each surgery (one pair per annotation, the
#: paper), or a consensus of the bone's map surgeries (one pair per input).
LABELS = ("each", "soft", "majority", "staple")
SUBSETS = ("train", "val", "test")


def _choice(value, choices, name):
    if value not in choices:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected one of {choices}. "
            f"Received: {name}={value!r}"
        )
    return value


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a positive integer. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _subset(data, experiment, fold, subset, validation_fraction):
    """Pairs of the subset and, per bone, the surgeons its maps count."""
    if not isinstance(data, CMData):
        raise ValueError(
            f"Invalid value for argument `data`. Expected a `cm_dataset.CMData`. "
            f"Received: {type(data).__name__}"
        )
    _choice(subset, SUBSETS, "subset")
    split = get_split(experiment, fold, data.n_bones, data.n_surgeons)
    train, val = split.train_val(validation_fraction)
    if subset == "test":
        # Scored as SPEC.md Sec. 8: every test bone against each reference
        # surgeon (Exp. 2: the 6 training surgeons, not the held-out one).
        return split.evaluation_pairs, split.reference_surgeons
    pairs = train if subset == "train" else val
    if not pairs:
        raise ValueError(
            f"Invalid value for argument `validation_fraction`. The '{subset}' subset "
            f"is empty. Received: validation_fraction={validation_fraction!r}"
        )
    return pairs, split.map_surgeons


def _legacy_scale(k, n_surgeons):
    """The released code's legacy encoding for K map annotations out of
    `n_surgeons`: penalty -K and scale `n_surgeons - 1` (at least 1), i.e.
    -7 and 6 in its bone experiment (K = 7) and -6 and 6 in its surgeon
    experiment (K = 6)."""
    return -float(k), float(max(n_surgeons - 1, 1))


def make_arrays(
    data,
    experiment,
    fold,
    subset="test",
    targets="rpdl",
    input_encoding="scaled",
    validation_fraction=0.1,
):
    """NumPy `(x, y)` of one subset, unaugmented, for evaluation.

    The same encodings as `make_dataset` (which see), built with the NumPy
    map functions of `keras_seglosses`. Samples follow the split's pair
    order: for `subset="test"` sample `i` is `split.evaluation_pairs[i]`
    (Experiment 1: `split.test`, the held-out bone's 7 surgeries, which
    share one input; Experiment 2: each bone with each of the 6 training
    surgeons, SPEC.md Sec. 8), so `model.evaluate(x, y)` gives the paper's
    "Overall" mean over all pairs.

    Args:
        data: `CMData`.
        experiment: 1 or 2.
        fold: int, 1-based.
        subset: "train", "val" or "test". Defaults to `"test"`.
        targets: "rpdl", "plain" or "legacy". Defaults to `"rpdl"`.
        input_encoding: "scaled" or "onehot". Defaults to `"scaled"`.
        validation_fraction: float in [0, 1). Defaults to `0.1`.

    Returns:
        `(x, y)` float32 arrays, x `(N, S, S, S, 1 or 14)`, y `(N, S, S, S,
        1 or 2)`.

    Example:

    >>> from cm_dataset.synthetic import generate
    >>> d = generate(n_bones=2, n_surgeons=2, size=16)
    >>> x, y = make_arrays(d, experiment=1, fold=1)
    >>> x.shape, y.shape
    ((2, 16, 16, 16, 1), (2, 16, 16, 16, 2))
    """
    _choice(targets, TARGETS, "targets")
    _choice(input_encoding, INPUT_ENCODINGS, "input_encoding")
    pairs, map_surgeons = _subset(data, experiment, fold, subset, validation_fraction)
    idx = [data.index(b, s) for b, s in pairs]
    x = encode_input(data.x[idx], input_encoding)
    y = data.y[idx].astype(np.float32)[..., None]
    if targets == "plain":
        return x, y
    ann = {b: data.annotations(b, map_surgeons[b]) for b in {b for b, _ in pairs}}
    if targets == "rpdl":
        m = np.stack([reward_penalty_map(ann[b]) for b, _ in pairs])
        return x, pack_targets(y, m[..., None])
    h = [
        legacy_reward_penalty_targets(
            data.y[data.index(b, s)], ann[b], *_legacy_scale(len(ann[b]), data.n_surgeons)
        )
        for b, s in pairs
    ]
    return x, np.stack(h)[..., None].astype(np.float32)


def make_dataset(
    data,
    experiment,
    fold,
    subset="train",
    batch_size=16,
    augment="random",
    seed=0,
    targets="rpdl",
    input_encoding="scaled",
    validation_fraction=0.1,
    label="each",
):
    """`tf.data.Dataset` of `(x, y)` batches for one leave-one-out fold.

    Inputs, per `input_encoding`:

    * `"scaled"`: `x / 6.5 - 1`, labels 0..13 mapped to [-1, 1], one
      channel (the original code's encoding);
    * `"onehot"`: 14 channels.

    Targets, per `targets` (packed with `keras_seglosses.pack_targets`
    conventions, SPEC.md Sec. 2):

    * `"rpdl"`: the binary surgery, then the bone's reward-penalty map
      (penalty -1, normalized) [000, Eq. 3, Fig. 2] from the surgeries the
      split allows: for "train" and "val" the bone's training surgeries
      (never the held-out surgeon of Experiment 2), for "test" the
      reference surgeons of SPEC.md Sec. 8. 2 channels.
    * `"plain"`: the surgery only. 1 channel.
    * `"legacy"`: the released code's single encoded target for
      `LegacyRewardPenaltyDice`, `legacy_reward_penalty_targets` with
      penalty `-K` for the K map surgeries and scale `n_surgeons - 1` (at
      least 1), as the released code: -7 and 6 in Experiment 1, -6 and 6
      in Experiment 2 on the 7-surgeon data. 1 channel.

    Labels, per `label` (the K surgeries are the bone's map surgeries, as
    for M: never a held-out surgeon):

    * `"each"`: one pair per surgery, labelled with it (the paper).
    * `"soft"`: one pair per input, labelled with the soft label
      `count / K` (`keras_seglosses.multirater.soft_label`); train with a
      loss that accepts soft targets (e.g. `Dice(soft_label=True)`).
    * `"majority"`: one pair per input, `count / K > 0.5` (a tie is
      background, `multirater.majority_vote`).
    * `"staple"`: one pair per input, STAPLE's posterior `> 0.5`
      (`multirater.staple` of the K surgeries).

    Augmentation (`cm_dataset.augment`), exact and identical on x, y and M:

    * `"random"`: one of the 48 cube symmetries per sample, drawn afresh
      every epoch. Applies to "train" only: "val" and "test" are left
      untransformed, so validation scores are comparable across epochs.
    * `"all48"`: every sample in all 48 symmetries (48 x the samples).
    * `"original216"`: the original code's 8 mirrorings x 27 rotation
      triples (216 x the samples, 48 distinct).
    * `None`: none.

    "train" is shuffled every epoch and drops the last short batch (so JAX
    does not recompile); "val" and "test" keep their order and every
    sample. The same arguments give the same batches, epoch after epoch.

    Args:
        data: `CMData`.
        experiment: 1 (leave one bone out) or 2 (leave one surgeon out).
        fold: int, 1-based held-out bone or surgeon.
        subset: "train", "val" (a fixed `validation_fraction` of the
            training pairs, see `Split.train_val`) or "test" (the pairs a
            prediction is scored against, `Split.evaluation_pairs`:
            Experiment 1 the held-out bone with each of its surgeons,
            Experiment 2 every bone with each training surgeon; the
            held-out surgeon of Experiment 2 is never seen). Defaults to
            `"train"`.
        batch_size: int. Defaults to `16`.
        augment: "random", "all48", "original216" or `None`. Defaults to
            `"random"`.
        seed: int, for the shuffle and the random symmetries. Defaults to `0`.
        targets: "rpdl", "plain" or "legacy". Defaults to `"rpdl"`.
        input_encoding: "scaled" or "onehot". Defaults to `"scaled"`.
        validation_fraction: float in [0, 1). Defaults to `0.1`.
        label: "each", "soft", "majority" or "staple" (not with
            `targets="legacy"`). Defaults to `"each"`.

    Returns:
        `tf.data.Dataset` of float32 `(x, y)`, x `(B, S, S, S, 1 or 14)`,
        y `(B, S, S, S, 2)` for "rpdl", `(B, S, S, S, 1)` otherwise.

    Example:

    >>> from cm_dataset.synthetic import generate
    >>> d = generate(n_bones=2, n_surgeons=3, size=16)
    >>> ds = make_dataset(d, experiment=2, fold=1, batch_size=2)
    >>> [tuple(t.shape) for t in next(iter(ds))]
    [(2, 16, 16, 16, 1), (2, 16, 16, 16, 2)]

    Reference:
        He et al., IJCNN 2020 [000, Sec. V] (protocol and augmentation).
    """
    import tensorflow as tf

    _choice(targets, TARGETS, "targets")
    _choice(input_encoding, INPUT_ENCODINGS, "input_encoding")
    _choice(augment, aug.AUGMENT_MODES, "augment")
    batch_size = _positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(
            "Invalid value for argument `seed`. Expected a non-negative integer. "
            f"Received: seed={seed!r}"
        )
    _choice(label, LABELS, "label")
    if label != "each" and targets == "legacy":
        raise ValueError(
            "Invalid value for argument `label`. The legacy target encodes each "
            f"surgery; expected 'each' with targets='legacy'. Received: label={label!r}"
        )
    pairs, map_surgeons = _subset(data, experiment, fold, subset, validation_fraction)
    if label != "each":
        # one pair per input: the consensus does not depend on the surgery
        first = {}
        for b, s in pairs:
            first.setdefault(b, (b, s))
        pairs = list(first.values())
    if augment == "random" and subset != "train":
        augment = None
    packed, tables = _pack(data, pairs, map_surgeons, targets, label)
    # Symmetry k is axis permutation k // 8, then the reversals FLIPS[k % 8].
    # Permuting bytes element by element is the costly part of a symmetry,
    # so every pair is stored once per permutation (6 bytes per voxel) and
    # a sample only picks its copy; the reversals are fused into the decoder.
    permutations = range(len(aug.PERMUTATIONS)) if augment is not None else (0,)
    by_permutation = np.stack(
        [np.moveaxis(aug.apply(np.moveaxis(packed, 0, -1), 8 * p), -1, 0) for p in permutations]
    )
    packed_t = tf.constant(by_permutation)
    del packed, by_permutation
    tables_t = tf.constant(tables)
    flips_t = tf.constant(np.array(aug.FLIPS, bool))  # symmetry k flips as FLIPS[k % 8]
    x_table = tf.constant(input_table(input_encoding))

    def load(i, k):
        return packed_t[k // 8, i], tf.gather(flips_t, k % 8), tf.gather(tables_t, i)

    decode = _decoder()

    n = len(pairs)
    if augment is None or augment == "random":
        variants = (0,)
    else:
        variants = aug.original216_indices() if augment == "original216" else range(48)
    table = tf.constant(np.array(variants), tf.int32)
    total = n * len(variants)
    # A generator of the pipeline's own, seeded by `seed` alone (TF's op
    # seeds would also follow the global seed that keras.utils.set_random_seed
    # sets). An epoch's order and symmetries are drawn in one sequential
    # step when its iterator starts, so no thread timing can reorder draws,
    # and every new iterator (every `fit` epoch) gets fresh ones.
    generator = tf.random.Generator.from_seed(seed)

    def epoch(_):
        order = tf.range(total, dtype=tf.int32)
        if subset == "train":
            order = tf.random.experimental.stateless_shuffle(order, generator.make_seeds(1)[:, 0])
        pair, variant = order // len(variants), tf.gather(table, order % len(variants))
        if augment == "random":
            variant = generator.uniform([total], 0, aug.N_SYMMETRIES, dtype=tf.int32)
        return pair, variant

    ds = tf.data.Dataset.from_tensors(0).map(epoch).unbatch()
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=subset == "train")
    ds = ds.map(
        lambda v, f, t: decode(v, f, t, x_table),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


_DECODE = []


def _decoder():
    """The batch decoder, one XLA-compiled function for the process (so its
    compilations are cached across datasets).

    Decoding runs once per batch, fused: each sample's axis reversals (a
    select between the volume and its reverse, which XLA folds into the
    reads), one read of the packed bytes, one write of the float32 outputs
    (unfused it takes several passes). Values come from small tables built
    in NumPy, so they equal `make_arrays` bit for bit."""
    if not _DECODE:
        import tensorflow as tf

        @tf.function(jit_compile=True, reduce_retracing=True)
        def decode(vol, flips, table, x_table):
            for axis in range(3):
                flip = tf.reshape(flips[:, axis], [-1, 1, 1, 1])
                vol = tf.where(flip, tf.reverse(vol, [axis + 1]), vol)
            width = tf.shape(table)[1]
            v = tf.cast(vol, tf.int32)
            x = tf.gather(x_table, v // width)
            y = tf.gather(table, v % width, batch_dims=1)
            return x, y

        _DECODE.append(decode)
    return _DECODE[0]


def _pack(data, pairs, map_surgeons, targets, label="each"):
    """Per pair, one integer volume `x * 2B + y * B + count` (B = K + 1, K
    the most map surgeries of a bone; uint8 up to 8 surgeons) and the
    target of every `(y, count)` code, `(len(pairs), 2B, channels)` float32.

    Packing lets a single exact transform move x, y and M together and
    keeps the working set at one byte per voxel and pair. The tables are
    the map formulas of `keras_seglosses.rpmap` on each possible count:
    M = count / max(count) or -1 [000, Fig. 2]; the legacy target
    y * count, -K where no surgery, 0 where only y, over n_surgeons - 1.
    For the consensus labels the y bit holds STAPLE's mask (`"staple"`) or
    nothing; the soft label and the majority vote are functions of the
    count alone."""
    base = max(len(s) for s in map_surgeons) + 1
    width = 2 * base
    dtype = np.uint8 if N_LABELS * width <= 256 else np.int32
    bones = {b for b, _ in pairs}
    counts = {b: data.annotations(b, map_surgeons[b]).sum(axis=0, dtype=np.int32) for b in bones}
    packed = np.empty((len(pairs),) + data.x.shape[1:], dtype)
    tables = np.zeros((len(pairs), width, 2 if targets == "rpdl" else 1), np.float32)
    y_code, c_code = np.divmod(np.arange(width), base)
    c = c_code.astype(np.float32)
    yf = y_code.astype(np.float32)
    for i, (b, s) in enumerate(pairs):
        j = data.index(b, s)
        y_bit = data.y[j]
        if label == "staple":
            y_bit = (staple(data.annotations(b, map_surgeons[b])).probability > 0.5)
        elif label != "each":
            y_bit = np.zeros_like(data.y[j])
        packed[i] = ((data.x[j].astype(np.int32) * 2 + y_bit) * base + counts[b]).astype(dtype)
        if targets == "legacy":
            penalty, scale = _legacy_scale(len(map_surgeons[b]), data.n_surgeons)
            h = np.where(c == 0, np.float32(penalty), yf * c)
            h = np.where((c == 1) & (yf == 1), np.float32(0.0), h)
            tables[i, :, 0] = h / np.float32(scale)
            continue
        k = np.float32(len(map_surgeons[b]))
        if label == "soft":
            tables[i, :, 0] = np.minimum(c / k, np.float32(1.0))
        elif label == "majority":
            tables[i, :, 0] = (2.0 * c > k).astype(np.float32)
        else:
            tables[i, :, 0] = yf
        if targets == "rpdl":
            top = np.float32(max(int(counts[b].max()), 1))
            tables[i, :, 1] = np.where(c > 0, c / top, np.float32(-1.0))
    return packed, tables
