"""Warm start: a new model's initial weights from a serving bundle's `ranker.pt`.

Parameters are matched by name. Per-item tables (first dimension = catalogue size + the pad and
unknown rows) are copied row by row through the item ids, so an item keeps what it learned even
when the new catalogue orders or extends it; items the old bundle did not have keep their fresh
initialisation. Other tensors are copied when their shapes agree (a changed architecture simply
starts fresh where it changed). Written here because it depends on our bundle layout; torch's
`load_state_dict(strict=False)` cannot remap rows.
"""

from __future__ import annotations

import torch

from shared.bundle import FIRST_ITEM_INDEX, Bundle


def warm_state(old: Bundle, new_item_ids: list[str],
               fresh: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    saved = torch.load(old.file("ranker.pt"), map_location="cpu", weights_only=True)
    old_state: dict[str, torch.Tensor] = saved["state_dict"]
    old_rows = old.row_of
    old_n, new_n = len(old_rows) + FIRST_ITEM_INDEX, len(new_item_ids) + FIRST_ITEM_INDEX
    src = torch.tensor([old_rows.get(i, -1) for i in new_item_ids])
    known = src >= 0
    state, copied, fresh_names, mapped_items = {}, [], [], int(known.sum())
    for name, tensor in fresh.items():
        before = old_state.get(name)
        if before is None:
            state[name], _ = tensor, fresh_names.append(name)
        elif tensor.shape == before.shape and (tensor.dim() == 0 or tensor.shape[0] != new_n
                                              or old_n == new_n and _same_order(src)):
            state[name], _ = before.clone(), copied.append(name)
        elif tensor.dim() >= 1 and tensor.shape[0] == new_n and before.shape[0] == old_n \
                and tensor.shape[1:] == before.shape[1:]:
            out = tensor.clone()
            out[:FIRST_ITEM_INDEX] = before[:FIRST_ITEM_INDEX]
            rows = torch.nonzero(known).squeeze(1)
            out[rows + FIRST_ITEM_INDEX] = before[src[rows] + FIRST_ITEM_INDEX]
            state[name], _ = out, copied.append(name)
        else:
            state[name], _ = tensor, fresh_names.append(name)
    return state, {"from": old.version, "copied": len(copied), "fresh": fresh_names,
                   "items_carried": mapped_items, "items_new": len(new_item_ids) - mapped_items}


def _same_order(src: torch.Tensor) -> bool:
    return bool(torch.equal(src, torch.arange(len(src))))
