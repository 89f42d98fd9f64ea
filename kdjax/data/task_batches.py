"""Step-indexed shuffled epochs over a featurized task split (`TaskData.arrays`).

`ArrayBatches` has the interface of `kdjax.data.corpus.StepBatches` (`rows(step, rows)`,
`global_batch`, `num_examples`, `epoch_of`), so `kdjax.data.corpus.Prefetcher` feeds it to
the sharded train step unchanged. The batch of step `s` is rows `s*B ... s*B + B - 1` of the
concatenation of per-epoch permutations (seeded by `(seed, epoch)`), so any step's batch is a
pure function of `(seed, step)`: a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np

from kdjax.errors import DataError


class ArrayBatches:
    """The global batch of any step, built from `{name: [N, ...] array}` (same N for all)."""

    def __init__(self, arrays: dict[str, np.ndarray], global_batch: int, seed: int,
                 shuffle: bool = True):
        if global_batch <= 0:
            raise DataError(f"train.batch_size must be positive, got {global_batch}")
        if not arrays:
            raise DataError("no arrays to batch")
        sizes = {k: len(v) for k, v in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise DataError(f"task arrays have different row counts: {sizes}")
        n = next(iter(sizes.values()))
        if n == 0:
            raise DataError("the training split is empty (check task.data_dir / limit_train)")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self.shuffle = shuffle
        self._n = n
        self._perms: dict[int, np.ndarray] = {}

    @property
    def num_examples(self) -> int:
        return self._n

    def steps_per_epoch(self) -> int:
        """ceil(N / global_batch)."""
        return -(-self._n // self.global_batch)

    def _perm(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self._n)
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self._n)
        return self._perms[epoch]

    def indices(self, step: int, rows: np.ndarray) -> np.ndarray:
        """Dataset row indices [len(rows)] of global-batch rows `rows` at `step`."""
        flat = step * self.global_batch + np.asarray(rows, np.int64)
        epochs, pos = flat // self._n, flat % self._n
        return np.array([self._perm(int(e))[p] for e, p in zip(epochs, pos)], np.int64)

    def rows(self, step: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `rows` (indices into the global batch) of step `step`'s batch:
        `{name: [len(rows), ...]}` for every array."""
        idx = self.indices(step, rows)
        return {k: v[idx] for k, v in self.arrays.items()}

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch / self._n
