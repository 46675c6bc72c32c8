"""Sharding a vector env across sandbox workers: split requests, join replies. Pure.

``num_envs`` sub-envs are spread over ``num_workers`` sandbox processes, each running a
Gymnasium vector env of its share. A request is split by sub-env index ranges; replies are
joined back so the caller sees exactly what one Gymnasium vector env of ``num_envs`` would
return: batched observations, per-env seeds ``seed + i``, and infos with ``_key`` masks.
With one worker everything passes through untouched.

Batches are cut and joined the way Gymnasium batched them, which the single space tells
(``batch_space``/``concatenate``): Box, Discrete, MultiDiscrete and MultiBinary batch as
arrays, Dict as a dict and Tuple as a tuple of batches, and every other space (Text, Graph,
Sequence, OneOf, custom and opaque spaces) as a tuple with one item per sub-env.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from .._errors import ProtocolError

__all__ = [
    "check_reset_mask",
    "concat",
    "merge_infos",
    "shard_sizes",
    "split",
    "split_options",
    "split_seeds",
    "split_values",
]


def shard_sizes(num_envs: int, num_workers: int) -> list[int]:
    """Sub-envs per worker, as even as possible: ``shard_sizes(8, 3) == [3, 3, 2]``."""
    for name, value in (("num_envs", num_envs), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, not {value!r}")
    if num_workers > num_envs:
        raise ValueError(
            f"num_workers={num_workers} exceeds num_envs={num_envs}; each worker needs at "
            "least one sub-env"
        )
    base, extra = divmod(num_envs, num_workers)
    return [base + (1 if i < extra else 0) for i in range(num_workers)]


def bounds(sizes: list[int]) -> list[tuple[int, int]]:
    """The ``(start, stop)`` sub-env range of each worker."""
    out, start = [], 0
    for size in sizes:
        out.append((start, start + size))
        start += size
    return out


_ARRAYS = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def split(batch: Any, ranges: list[tuple[int, int]], space: Any = None) -> list[Any]:
    """Cut a batched value into one piece per range, as ``space`` (the single space) batches:
    arrays along their first axis, Dict and Tuple per member, anything else (Text, Graph,
    Sequence, OneOf, custom) as a tuple of one item per sub-env. ``None``: an array."""
    if len(ranges) == 1:
        return [batch]
    if isinstance(space, spaces.Dict):
        parts = {key: split(batch[key], ranges, sub) for key, sub in space.spaces.items()}
        return [{key: parts[key][i] for key in parts} for i in range(len(ranges))]
    if isinstance(space, spaces.Tuple):
        columns = [split(batch[i], ranges, sub) for i, sub in enumerate(space.spaces)]
        return [tuple(column[i] for column in columns) for i in range(len(ranges))]
    if space is None or isinstance(space, _ARRAYS):
        return [batch[start:stop] for start, stop in ranges]
    items = tuple(batch)
    return [items[start:stop] for start, stop in ranges]


def concat(parts: list[Any], space: Any = None) -> Any:
    """Join per-worker batches as ``space`` (the single space) batches (see ``split``);
    ``None``: arrays."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(space, spaces.Dict):
        return {
            key: concat([part[key] for part in parts], sub) for key, sub in space.spaces.items()
        }
    if isinstance(space, spaces.Tuple):
        return tuple(concat([part[i] for part in parts], sub) for i, sub in enumerate(space.spaces))
    if space is None or isinstance(space, _ARRAYS):
        return np.concatenate(parts)
    joined: list[Any] = []
    for part in parts:
        joined.extend(part)
    return tuple(joined)


def split_seeds(seed: int | list[int | None] | None, sizes: list[int]) -> list[Any]:
    """Gymnasium's rule (sub-env i gets ``seed + i``), cut into per-worker seed lists."""
    if seed is None:
        return [None] * len(sizes)
    if isinstance(seed, int) and not isinstance(seed, bool):
        if len(sizes) == 1:
            return [seed]
        seeds: list[int | None] = [seed + i for i in range(sum(sizes))]
    else:
        seeds = list(seed)  # type: ignore[arg-type]
        if len(seeds) != sum(sizes):
            raise ValueError(f"expected {sum(sizes)} seeds, got {len(seeds)}")
    return [seeds[start:stop] for start, stop in bounds(sizes)]


def check_reset_mask(options: dict[str, Any] | None, num_envs: int) -> None:
    """Check ``options["reset_mask"]`` of the whole batch as Gymnasium's vector envs do, with
    the same exceptions and words (before the mask is cut per worker, where a worker with
    nothing to reset is simply skipped)."""
    if options is None or "reset_mask" not in options:
        return
    mask = options["reset_mask"]
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"`options['reset_mask']` must be a numpy array, got {type(mask)}")
    if mask.shape != (num_envs,):
        raise ValueError(
            f"`options['reset_mask']` must have shape `({num_envs},)`, got {mask.shape}"
        )
    if mask.dtype != np.bool_:
        raise TypeError(f"`options['reset_mask']` must have `dtype=np.bool_`, got {mask.dtype}")
    if not np.any(mask):
        raise ValueError(
            "`options['reset_mask']` must contain a boolean array with at least one True "
            f"value, got reset_mask={mask}"
        )


def split_options(options: dict[str, Any] | None, sizes: list[int]) -> list[Any]:
    """The same options for every worker, except ``reset_mask``, which is cut per worker."""
    if options is None or len(sizes) == 1 or "reset_mask" not in options:
        return [options] * len(sizes)
    masks = split(options["reset_mask"], bounds(sizes))
    return [{**options, "reset_mask": mask} for mask in masks]


def split_values(values: Any, sizes: list[int]) -> list[Any]:
    """``set_attr`` values: a list or tuple holds one value per sub-env; anything else is
    broadcast."""
    if isinstance(values, (list, tuple)):
        if len(values) != sum(sizes):
            raise ValueError(f"expected {sum(sizes)} values, got {len(values)}")
        return [list(values[start:stop]) for start, stop in bounds(sizes)]
    return [values] * len(sizes)


def _blank(like: Any, size: int) -> Any:
    if isinstance(like, dict):
        return {key: _blank(value, size) for key, value in like.items()}
    if isinstance(like, np.ndarray):
        if like.dtype == object:
            return np.full((size, *like.shape[1:]), None, dtype=object)
        return np.zeros((size, *like.shape[1:]), dtype=like.dtype)
    return None


MAX_INFO_DEPTH = 64  # nested info dicts joined; deeper is a forged reply, not an env's info


def merge_infos(parts: list[dict[str, Any]], sizes: list[int], depth: int = 0) -> dict[str, Any]:
    """Join per-worker info dicts as one vector env would have built them.

    Arrays are concatenated; a worker that lacks a key contributes blank entries (zeros,
    ``False`` masks, ``None`` for objects), exactly as Gymnasium leaves sub-envs that did not
    report the key. Dicts nested deeper than ``MAX_INFO_DEPTH`` are a ``ProtocolError``
    (msgpack decodes dicts ~1000 deep, past Python's recursion limit for this join).
    """
    if len(parts) == 1:
        return parts[0]
    if depth > MAX_INFO_DEPTH:
        raise ProtocolError(
            f"the sandbox sent infos nested more than {MAX_INFO_DEPTH} dicts deep, which no "
            "env's info is; the reply is refused"
        )
    keys: list[str] = []
    for part in parts:
        keys.extend(key for key in part if key not in keys)
    merged: dict[str, Any] = {}
    for key in keys:
        like = next(part[key] for part in parts if key in part)
        if isinstance(like, dict):
            merged[key] = merge_infos([part.get(key, {}) for part in parts], sizes, depth + 1)
        elif isinstance(like, np.ndarray):
            pieces = [
                part[key] if key in part else _blank(like, size)
                for part, size in zip(parts, sizes, strict=True)
            ]
            merged[key] = np.concatenate(pieces)
        else:
            merged[key] = like  # not per sub-env: the first worker's value stands
    return merged
