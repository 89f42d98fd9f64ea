"""Step-indexed shuffled epochs over a featurized task split (`TaskData.arrays`).

`ArrayBatches` has the interface the trainer's prefetcher reads (`rows(step, rows)`,
`global_batch`, `num_examples`, `epoch_of`, `keys`, `shapes()`, `tokens(step)`). The batch of
step `s` is a pure function of `(seed, s)`: a resumed run sees exactly the batches it would
have seen, and every process computes the same global batch and materialises only its rows.

Two ways to cut batches:

* one length (``buckets=None``): rows ``s*B ... s*B + B - 1`` of the concatenation of per-epoch
  permutations, every batch padded to the arrays' full length L;
* length buckets (``buckets=(16, 32, 64, 128)``): each row goes to the smallest bucket that
  holds its real tokens; every epoch, each bucket's rows are shuffled and cut into batches of
  B (the last one filled up with other rows of the same bucket), and the epoch's batches are
  shuffled. A batch is padded only to its bucket's length: on short texts (NSMC reviews are
  ~20 tokens) most of the padding - and of the compute - disappears. A bucket with fewer than
  B rows is merged into a neighbour, so no batch is mostly repeats. Each bucket length is one
  compiled program.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kdjax.errors import ConfigError, DataError


def bucket_lengths(buckets: Sequence[int] | None, max_length: int) -> tuple[int, ...]:
    """The sorted bucket lengths <= max_length, with max_length itself always the last."""
    if not buckets:
        return (max_length,)
    bad = [b for b in buckets if int(b) <= 0]
    if bad:
        raise ConfigError(f"task.buckets must be positive lengths, got {list(buckets)}")
    return tuple(sorted({int(b) for b in buckets if int(b) < max_length} | {max_length}))


class ArrayBatches:
    """The global batch of any step, built from `{name: [N, ...] array}` (same N for all).

    Arrays with a second axis of the full length L (input_ids, attention_mask, token_type_ids,
    token labels) are cut to the batch's length; [N] arrays (labels, start/end positions,
    hard_weight) are taken whole.
    """

    def __init__(self, arrays: dict[str, np.ndarray], global_batch: int, seed: int,
                 shuffle: bool = True, buckets: Sequence[int] | None = None,
                 equal_tokens: bool = False, multiple: int = 1):
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
        self.max_length = int(self.arrays["input_ids"].shape[1])
        self._token_keys = tuple(k for k, v in self.arrays.items()
                                 if v.ndim >= 2 and v.shape[1] == self.max_length)
        self.lengths = self.arrays["attention_mask"].sum(axis=1).astype(np.int64)
        self.buckets = bucket_lengths(buckets, self.max_length) if buckets else None
        # rows per batch of each bucket length: `global_batch`, or with `equal_tokens` as many
        # rows as fill global_batch x max_length tokens (a multiple of `multiple`, the
        # data-parallel devices x grad_accum)
        self._rows_of = {length: self._bucket_rows(length, equal_tokens, int(multiple))
                         for length in (self.buckets or (self.max_length,))}
        self._perms: dict[int, np.ndarray] = {}
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.buckets is not None:
            self._groups = self._group_rows()

    # -- bucketing ------------------------------------------------------------------------------
    def _bucket_rows(self, length: int, equal_tokens: bool, multiple: int) -> int:
        if not equal_tokens:
            return self.global_batch
        rows = self.global_batch * self.max_length // length
        return max(multiple, rows // multiple * multiple)

    def _group_rows(self) -> dict[int, np.ndarray]:
        """{bucket length: row indices}, small buckets merged into a neighbour."""
        which = np.searchsorted(np.asarray(self.buckets), self.lengths, side="left")
        which = np.minimum(which, len(self.buckets) - 1)
        groups = {self.buckets[b]: np.nonzero(which == b)[0] for b in range(len(self.buckets))}
        groups = {k: v for k, v in groups.items() if len(v)}
        while len(groups) > 1:
            small = [k for k, v in sorted(groups.items()) if len(v) < self._rows_of[k]]
            if not small:
                break
            k = small[0]
            keys = sorted(groups)
            i = keys.index(k)
            # Up into the next longer bucket (its length holds these rows); the longest bucket
            # takes in the one below it instead.
            into, out = (keys[i + 1], k) if i + 1 < len(keys) else (k, keys[i - 1])
            groups[into] = np.sort(np.concatenate([groups[into], groups.pop(out)]))
        return groups

    def _epoch_plan(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """(row indices of every batch [S] x [B_s], length [S]) of a bucketed epoch."""
        if epoch in self._epochs:
            return self._epochs[epoch]
        if len(self._epochs) > 2:
            self._epochs.pop(min(self._epochs))
        rng = np.random.default_rng([self.seed, epoch, 1])
        batches, lengths = [], []
        for length, rows in sorted(self._groups.items()):
            b = self._rows_of[length]
            rows = rng.permutation(rows) if self.shuffle else rows
            short = -len(rows) % b
            if short:  # fill the last batch with other rows of this bucket
                fill = rng.choice(rows[:len(rows) - (b - short)] if len(rows) > b else rows,
                                  size=short, replace=len(rows) - (b - short) < short)
                rows = np.concatenate([rows, fill])
            batches += list(rows.reshape(-1, b))
            lengths += [length] * (len(rows) // b)
        order = rng.permutation(len(batches)) if self.shuffle else np.arange(len(batches))
        plan = ([batches[i] for i in order], np.asarray(lengths, np.int64)[order])
        self._epochs[epoch] = plan
        return plan

    # -- the interface ---------------------------------------------------------------------------
    @property
    def num_examples(self) -> int:
        return self._n

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    def steps_per_epoch(self) -> int:
        """Batches in one pass over the data: ceil(N / B), or the bucketed epoch's count."""
        if self.buckets is None:
            return -(-self._n // self.global_batch)
        return int(sum(-(-len(v) // self._rows_of[k]) for k, v in self._groups.items()))

    def _perm(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self._n)
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self._n)
        return self._perms[epoch]

    def _batch(self, step: int) -> tuple[np.ndarray, int]:
        """(row indices [B], padded length) of step `step`'s global batch."""
        if self.buckets is None:
            flat = step * self.global_batch + np.arange(self.global_batch, dtype=np.int64)
            epochs, pos = flat // self._n, flat % self._n
            idx = np.array([self._perm(int(e))[p] for e, p in zip(epochs, pos)], np.int64)
            return idx, self.max_length
        spe = self.steps_per_epoch()
        rows, lengths = self._epoch_plan(step // spe)
        return rows[step % spe], int(lengths[step % spe])

    def batch_rows(self, step: int) -> int:
        """Rows of step `step`'s global batch (differs per bucket with `equal_tokens`)."""
        if self.buckets is None:
            return self.global_batch
        spe = self.steps_per_epoch()
        return self._rows_of[int(self._epoch_plan(step // spe)[1][step % spe])]

    def indices(self, step: int, rows: np.ndarray) -> np.ndarray:
        """Dataset row indices [len(rows)] of global-batch rows `rows` at `step`."""
        return self._batch(step)[0][np.asarray(rows, np.int64)]

    def rows(self, step: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `rows` (indices into the global batch) of step `step`'s batch:
        `{name: [len(rows), ...]}`, token arrays cut to the batch's length."""
        idx, length = self._batch(step)
        idx = idx[np.asarray(rows, np.int64)]
        return {k: (v[idx, :length] if k in self._token_keys else v[idx])
                for k, v in self.arrays.items()}

    def shapes(self) -> list[dict[str, tuple[tuple[int, ...], str]]]:
        """Every batch shape a run sees: {name: (shape, dtype)}, one per bucket length."""
        lengths = [self.max_length] if self.buckets is None else sorted(self._groups)
        out = []
        for length in lengths:
            b = self._rows_of[length]
            out.append({k: ((b, length, *v.shape[2:]) if k in self._token_keys
                            else (b, *v.shape[1:]), str(v.dtype))
                        for k, v in self.arrays.items()})
        return out

    def tokens(self, step: int) -> np.ndarray:
        """[padded, real] tokens of step `step`'s global batch."""
        idx, length = self._batch(step)
        return np.array([len(idx) * length, self.lengths[idx].sum()], np.float64)

    def padding_share(self, steps: int | None = None) -> float:
        """The share of padding tokens over the first `steps` batches (default one epoch)."""
        steps = steps or self.steps_per_epoch()
        total = sum((self.tokens(s) for s in range(steps)), np.zeros(2))
        return float(1.0 - total[1] / max(total[0], 1.0))

    def epoch_of(self, step: int) -> float:
        if self.buckets is None:
            return step * self.global_batch / self._n
        return step / self.steps_per_epoch()
