"""The paper's leave-one-out experiments and their reward-penalty maps.

* Experiment 1, `leave_one_bone_out(fold)`: bone `fold` (1-based) and its
  surgeries are the test set; the other bones with all their surgeries
  train. The question: can a model plan the surgery of a new patient?
* Experiment 2, `leave_one_surgeon_out(fold)`: surgeon `fold` (1-based) and
  their surgeries on every bone are the test set; the other surgeons train.
  The question: does the model agree with the training surgeons better than
  a new surgeon does? [000, Sec. V; 001]

Reward-penalty maps [000, Fig. 2] are a property of an input (a bone): the
map of a bone is built from the surgeries on it that the split allows.
Training maps use the bone's training surgeries only, so Experiment 2 never
sees the held-out surgeon. Test-time maps follow SPEC.md Sec. 8:
Experiment 1 scores the held-out bone against its surgeons with the map of
those surgeons; Experiment 2 scores each bone's prediction against the
training surgeons with the map of those same surgeons, and the surgeon
baseline compares the held-out surgeon with them.
"""

from dataclasses import dataclass

import numpy as np

from keras_seglosses.rpmap import reward_penalty_map

__all__ = ["Split", "leave_one_bone_out", "leave_one_surgeon_out", "get_split",
           "FOLDER_EXPERIMENTS", "FolderSplit", "folder_split", "folder_n_folds", "folder_raters"]


@dataclass(frozen=True)
class Split:
    """One fold of a leave-one-out experiment. Bones and surgeons 0-based.

    Attributes:
        experiment: 1 (leave one bone out) or 2 (leave one surgeon out).
        fold: 1-based fold number (the held-out bone or surgeon + 1).
        n_bones, n_surgeons: size of the data set.
        held_out: 0-based index of the held-out bone (Exp. 1) or surgeon
            (Exp. 2).
        train: tuple of `(bone, surgeon)` training pairs, bone-major
            (the validation pairs included; see `train_val`).
        test: tuple of `(bone, surgeon)` test pairs, bone-major.
        map_surgeons: tuple, per bone, of the surgeons whose surgeries build
            that bone's training map (empty for the held-out bone of Exp. 1).
        test_bones: the bones a model predicts at test time (Exp. 1 the
            held-out bone, Exp. 2 every bone).
        reference_surgeons: tuple, per bone, of the surgeons a test
            prediction of that bone is scored against and whose surgeries
            build its test-time map (SPEC.md Sec. 8): Exp. 1 all surgeons
            of the held-out bone; Exp. 2 the training surgeons. Empty for
            bones not tested.

    Example:

    >>> s = leave_one_bone_out(3)
    >>> len(s.train), len(s.test), s.test_bones, s.reference_surgeons[2]
    (56, 7, (2,), (0, 1, 2, 3, 4, 5, 6))
    """

    experiment: int
    fold: int
    n_bones: int
    n_surgeons: int
    held_out: int
    train: tuple
    test: tuple
    map_surgeons: tuple
    test_bones: tuple
    reference_surgeons: tuple

    def indices(self, pairs):
        """Flat indices `bone * n_surgeons + surgeon` of `pairs`, int64 array."""
        return np.asarray([b * self.n_surgeons + s for b, s in pairs], np.int64)

    @property
    def train_indices(self):
        """Flat indices of the training pairs (into `CMData.x` / `.y`)."""
        return self.indices(self.train)

    @property
    def test_indices(self):
        """Flat indices of the test pairs."""
        return self.indices(self.test)

    @property
    def evaluation_pairs(self):
        """The `(bone, surgeon)` pairs a model's test prediction is scored
        against (SPEC.md Sec. 8), bone-major: each test bone with each of its
        `reference_surgeons`. Experiment 1: the held-out bone's 7 pairs
        (`test`). Experiment 2: every bone with each of the 6 training
        surgeons (54 pairs); the held-out surgeon's pairs (`test`) are the
        surgeon baseline, scored against the same 54.

        Example:

        >>> len(leave_one_surgeon_out(1).evaluation_pairs)
        54
        """
        return tuple((b, s) for b in self.test_bones for s in self.reference_surgeons[b])

    def train_val(self, validation_fraction=0.1):
        """Split the training pairs into training and validation pairs.

        As the paper, a random 10 % of the training set validates [000,
        Sec. V]; here the draw is fixed per experiment and fold (not by the
        training seed), so every run of a fold validates on the same pairs.
        At least one pair validates when the fraction is positive.

        Args:
            validation_fraction: float in [0, 1). Defaults to `0.1`.

        Returns:
            `(train_pairs, val_pairs)`, tuples of `(bone, surgeon)` in
            bone-major order.
        """
        if not isinstance(validation_fraction, (int, float)) or not 0 <= validation_fraction < 1:
            raise ValueError(
                "Invalid value for argument `validation_fraction`. Expected a "
                f"number in [0, 1). Received: validation_fraction={validation_fraction!r}"
            )
        n = len(self.train)
        k = 0 if validation_fraction == 0 else max(1, int(round(validation_fraction * n)))
        rng = np.random.default_rng([self.experiment, self.fold, self.n_bones, self.n_surgeons])
        val = set(rng.permutation(n)[:k].tolist())
        return (
            tuple(p for i, p in enumerate(self.train) if i not in val),
            tuple(p for i, p in enumerate(self.train) if i in val),
        )

    def train_maps(self, data, penalty=-1.0):
        """Training RPMap of every bone that has training surgeries.

        Args:
            data: `CMData`.
            penalty: float <= 0, the normalized penalty. Defaults to `-1.0`.

        Returns:
            dict `bone -> (S, S, S)` float32 map, from `map_surgeons[bone]`.
        """
        self._check(data)
        return {
            b: reward_penalty_map(data.annotations(b, s), penalty=penalty)
            for b, s in enumerate(self.map_surgeons)
            if s
        }

    def test_maps(self, data, penalty=-1.0):
        """Test-time RPMap of every test bone, from `reference_surgeons`.

        Args:
            data: `CMData`.
            penalty: float <= 0. Defaults to `-1.0`.

        Returns:
            dict `bone -> (S, S, S)` float32 map.
        """
        self._check(data)
        return {
            b: reward_penalty_map(data.annotations(b, self.reference_surgeons[b]), penalty=penalty)
            for b in self.test_bones
        }

    def _check(self, data):
        if (data.n_bones, data.n_surgeons) != (self.n_bones, self.n_surgeons):
            raise ValueError(
                f"Invalid value for argument `data`. Expected {self.n_bones} bones x "
                f"{self.n_surgeons} surgeons as this split. Received: {data!r}"
            )


def _check_sizes(n_bones, n_surgeons, held):
    """Validate the data set's size; the held-out kind needs two or more (one
    to hold out, one to train on)."""
    for name, value in (("n_bones", n_bones), ("n_surgeons", n_surgeons)):
        low = 2 if name == held else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(
                f"Invalid value for argument `{name}`. Expected an integer >= {low}. "
                f"Received: {name}={value!r}"
            )
    return int(n_bones), int(n_surgeons)


def _check_fold(fold, n, what):
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 1 <= fold <= n:
        raise ValueError(
            f"Invalid value for argument `fold`. Expected an integer from 1 to {n} "
            f"(the held-out {what}). Received: fold={fold!r}"
        )
    return int(fold)


def leave_one_bone_out(fold, n_bones=9, n_surgeons=7):
    """Experiment 1: hold out bone `fold` (1-based) and all its surgeries.

    9 folds on the CM data, each with 56 training pairs and the held-out
    bone's 7 test pairs [000, Sec. V].

    Args:
        fold: int, 1..n_bones.
        n_bones: int. Defaults to `9`.
        n_surgeons: int. Defaults to `7`.

    Returns:
        `Split`.

    Example:

    >>> s = leave_one_bone_out(1)
    >>> s.held_out, s.test[:2], len(s.train)
    (0, ((0, 0), (0, 1)), 56)
    """
    n_bones, n_surgeons = _check_sizes(n_bones, n_surgeons, "n_bones")
    fold = _check_fold(fold, n_bones, "bone")
    held = fold - 1
    surgeons = tuple(range(n_surgeons))
    return Split(
        experiment=1,
        fold=fold,
        n_bones=n_bones,
        n_surgeons=n_surgeons,
        held_out=held,
        train=tuple((b, s) for b in range(n_bones) if b != held for s in surgeons),
        test=tuple((held, s) for s in surgeons),
        map_surgeons=tuple(() if b == held else surgeons for b in range(n_bones)),
        test_bones=(held,),
        reference_surgeons=tuple(surgeons if b == held else () for b in range(n_bones)),
    )


def leave_one_surgeon_out(fold, n_bones=9, n_surgeons=7):
    """Experiment 2: hold out surgeon `fold` (1-based) on every bone.

    7 folds on the CM data, each with 6 training surgeons per bone (54
    pairs) and the held-out surgeon's 9 test pairs [000, Sec. V].

    Args:
        fold: int, 1..n_surgeons.
        n_bones: int. Defaults to `9`.
        n_surgeons: int. Defaults to `7`.

    Returns:
        `Split`.

    Example:

    >>> s = leave_one_surgeon_out(7)
    >>> len(s.train), s.test[:2], s.map_surgeons[0]
    (54, ((0, 6), (1, 6)), (0, 1, 2, 3, 4, 5))
    """
    n_bones, n_surgeons = _check_sizes(n_bones, n_surgeons, "n_surgeons")
    fold = _check_fold(fold, n_surgeons, "surgeon")
    held = fold - 1
    trainers = tuple(s for s in range(n_surgeons) if s != held)
    return Split(
        experiment=2,
        fold=fold,
        n_bones=n_bones,
        n_surgeons=n_surgeons,
        held_out=held,
        train=tuple((b, s) for b in range(n_bones) for s in trainers),
        test=tuple((b, held) for b in range(n_bones)),
        map_surgeons=tuple(trainers for _ in range(n_bones)),
        test_bones=tuple(range(n_bones)),
        reference_surgeons=tuple(trainers for _ in range(n_bones)),
    )


def get_split(experiment, fold, n_bones=9, n_surgeons=7):
    """The split of `experiment` (1 or 2) and `fold` (1-based).

    Args:
        experiment: 1 (leave one bone out) or 2 (leave one surgeon out).
        fold: int.
        n_bones: int. Defaults to `9`.
        n_surgeons: int. Defaults to `7`.

    Returns:
        `Split`.

    Example:

    >>> get_split(2, 1).experiment
    2
    """
    if experiment == 1 and not isinstance(experiment, bool):
        return leave_one_bone_out(fold, n_bones, n_surgeons)
    if experiment == 2:
        return leave_one_surgeon_out(fold, n_bones, n_surgeons)
    raise ValueError(
        "Invalid value for argument `experiment`. Expected 1 (leave one bone out) "
        f"or 2 (leave one surgeon out). Received: experiment={experiment!r}"
    )


#: Splits of a folder of cases (`cm_dataset.folder`), `folder_split(experiment=...)`.
FOLDER_EXPERIMENTS = ("case", "rater")


@dataclass(frozen=True)
class FolderSplit:
    """One fold of a folder of multi-annotator cases (SPEC.md Sec. 11).

    Every subset is a tuple of `(case name, raters)`: the case and the raters
    whose annotations it uses, for the labels and for the reward-penalty map
    alike (so no held-out rater ever enters a training map).

    * `experiment="case"` (the CM `bone` experiment for any data): the
      fold's cases are held out with all their raters; the model is scored
      on them against every one of their raters.
    * `experiment="rater"` (the CM `surgeon` experiment): rater `held_out`
      is held out on every case; the other raters train, and every case
      that the held-out rater annotated is tested against the training
      raters, with the held-out rater's annotation as the inter-rater
      baseline (`baseline`).

    Validation is a fixed `validation_fraction` of the training cases (at
    least one, drawn from the fold, not from the training seed), left out
    of training; with a single training case it validates on that case
    (fixed patches), which then measures fit, not generalization.

    Attributes:
        experiment: "case" or "rater".
        fold: 1-based fold number.
        n_folds: number of folds.
        held_out: tuple of the held-out case names ("case") or the held-out
            rater id ("rater").
        train, val: tuples of `(case, raters)`.
        test: tuple of `(case, reference raters)`.
        baseline: tuple of `(case, held-out rater)` ("rater"; empty for "case").
    """

    experiment: str
    fold: int
    n_folds: int
    held_out: object
    train: tuple
    val: tuple
    test: tuple
    baseline: tuple = ()

    @staticmethod
    def raters_of(subset):
        """dict case name -> raters of a subset (`train`, `val`, `test`)."""
        return {name: tuple(raters) for name, raters in subset}


def _case_raters(cases):
    """(case name, raters) in the folder's order, from `Case` objects or pairs."""
    out = []
    for c in cases:
        name, raters = (c.name, c.raters) if hasattr(c, "raters") else c
        out.append((str(name), tuple(raters)))
    if not out:
        raise ValueError("Invalid value for argument `cases`. Expected at least one case. "
                         "Received: none")
    return out


def _case_folds(names, folds):
    """Groups of case names, one per fold: one case each (natural order) for
    leave-one-out, else K near-equal groups of a fixed permutation (seeded by
    the number of cases and folds, so the assignment is the same everywhere)."""
    n = len(names)
    if folds is None:
        return [(name,) for name in names]
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 2 <= folds <= n:
        raise ValueError(
            f"Invalid value for argument `folds`. Expected an integer from 2 to the {n} "
            f"cases (K-fold over cases), or None for leave one case out. Received: folds={folds!r}"
        )
    order = np.random.default_rng([n, int(folds)]).permutation(n)
    return [tuple(names[i] for i in sorted(part)) for part in np.array_split(order, folds)]


def _validation(train, fraction, key):
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) \
            or not 0 <= fraction < 1:
        raise ValueError("Invalid value for argument `validation_fraction`. Expected a number "
                         f"in [0, 1). Received: validation_fraction={fraction!r}")
    n = len(train)
    k = 0 if fraction == 0 or n < 2 else max(1, int(round(fraction * n)))
    if fraction and not k:
        return train, train
    chosen = set(np.random.default_rng(key).permutation(n)[:k].tolist())
    return (tuple(p for i, p in enumerate(train) if i not in chosen),
            tuple(p for i, p in enumerate(train) if i in chosen))


def folder_n_folds(experiment, cases, folds=None):
    """Number of folds of `folder_split` for these cases."""
    pairs = _case_raters(cases)
    if experiment == "case":
        return len(_case_folds([n for n, _ in pairs], folds))
    if experiment == "rater":
        return len(folder_raters(pairs))
    raise ValueError(f"Invalid value for argument `experiment`. Expected one of "
                     f"{', '.join(FOLDER_EXPERIMENTS)}. Received: experiment={experiment!r}")


def folder_raters(cases):
    """Every rater id of the cases, in natural order (as `folder.raters`)."""
    from cm_dataset.folder import _natural_key

    return tuple(sorted({r for _, raters in _case_raters(cases) for r in raters},
                        key=_natural_key))


def folder_split(experiment, fold, cases, *, folds=None, validation_fraction=0.1):
    """The split `fold` (1-based) of a folder's cases.

    Args:
        experiment: "case" (leave one case out, or K-fold over cases with
            `folds=K`) or "rater" (leave one rater out; fold k holds out the
            k-th rater id in natural order, `folder_raters`).
        fold: int, 1..`folder_n_folds(experiment, cases, folds)`.
        cases: `folder.Case` objects (or `(name, raters)` pairs).
        folds: int K >= 2 for K-fold over cases ("case" only), or `None`.
            Defaults to `None`.
        validation_fraction: float in [0, 1). Defaults to `0.1`.

    Returns:
        `FolderSplit`.

    Raises:
        ValueError: an unknown experiment, a fold out of range, `folds` with
            "rater", or a split that leaves nothing to train on.

    Example:

    >>> cases = [("a", ("r1", "r2")), ("b", ("r1", "r2")), ("c", ("r2",))]
    >>> s = folder_split("rater", 1, cases)
    >>> s.held_out, s.test, s.baseline
    ('r1', (('a', ('r2',)), ('b', ('r2',))), (('a', 'r1'), ('b', 'r1')))
    """
    pairs = _case_raters(cases)
    n = folder_n_folds(experiment, pairs, folds if experiment == "case" else None)
    if experiment == "rater" and folds is not None:
        raise ValueError("Invalid value for argument `folds`. K-fold applies to "
                         "experiment='case'; experiment='rater' has one fold per rater. "
                         f"Received: folds={folds!r}")
    what = "held-out case group" if experiment == "case" else "held-out rater"
    fold = _check_fold(fold, n, what)
    if experiment == "case":
        if n < 2:
            raise ValueError("Invalid value for argument `cases`: leave one case out needs at "
                             "least 2 cases (one to test, one to train). Received: 1 case")
        held = _case_folds([name for name, _ in pairs], folds)[fold - 1]
        train = tuple(p for p in pairs if p[0] not in held)
        test = tuple(p for p in pairs if p[0] in held)
        baseline = ()
    else:
        held = folder_raters(pairs)[fold - 1]
        train = tuple((name, tuple(r for r in raters if r != held)) for name, raters in pairs)
        train = tuple(p for p in train if p[1])
        test = tuple((name, tuple(r for r in raters if r != held)) for name, raters in pairs
                     if held in raters and len(raters) > 1)
        baseline = tuple((name, held) for name, _ in test)
        if not train:
            raise ValueError(f"Invalid value for argument `fold`: holding out rater {held!r} "
                             "leaves no case with a training rater. Received: fold={fold}")
    train, val = _validation(train, validation_fraction, [len(pairs), n, fold,
                                                          FOLDER_EXPERIMENTS.index(experiment)])
    return FolderSplit(experiment=experiment, fold=fold, n_folds=n, held_out=held,
                       train=train, val=val, test=test, baseline=baseline)
