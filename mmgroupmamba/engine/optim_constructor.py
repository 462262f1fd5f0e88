"""The optimizer of a GroupMamba model with one parameter group per setting, not per
parameter."""
from typing import List, Optional

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch.optim import Optimizer


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MergedGroupsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """:class:`~mmengine.optim.DefaultOptimWrapperConstructor` (same ``paramwise_cfg``,
    same lr and weight decay for every parameter), with the parameters that end up with
    the same settings in one parameter group.

    With a ``paramwise_cfg`` the default constructor makes a group of every parameter.
    GroupMamba-T has 1192 of them (each of the four channel groups of a layer has its own
    projections, norms and SSM parameters), so a Mask R-CNN model has ~1230 groups, and
    PyTorch's AdamW runs its foreach kernels once per group (host time alone, on a CPU
    with tiny tensors: 75 ms a step for 1300 groups, 19 ms for the same tensors in two).
    Merged, the same update is a handful of groups (decay / no decay, custom keys).

    Schedulers scale every group's lr by the same factor, so merged groups keep equal
    settings. An optimizer state saved with one group per parameter (a run started with
    the default constructor) loads into the merged groups: ``--resume`` works across the
    switch.
    """

    def __call__(self, model: nn.Module):
        optim_wrapper = super().__call__(model)
        if self.paramwise_cfg:
            optim_wrapper.optimizer.register_load_state_dict_pre_hook(_merge_saved_groups)
        return optim_wrapper

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module=None) -> None:
        if prefix:  # the default walk recursing into a child module
            return super().add_params(params, module, prefix, is_dcn_module)
        per_param: List[dict] = []
        super().add_params(per_param, module, prefix, is_dcn_module)
        params.extend(merge_param_groups(per_param))


def merge_param_groups(groups: List[dict]) -> List[dict]:
    """``groups`` (dicts with ``params`` and settings) with equal settings merged, in the
    order of their first occurrence."""
    merged = {}
    for group in groups:
        settings = {k: v for k, v in group.items() if k != 'params'}
        key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
        if key not in merged:
            merged[key] = dict(settings, params=[])
        merged[key]['params'].extend(group['params'])
    return list(merged.values())


def _merge_saved_groups(optimizer: Optimizer, state_dict: dict) -> Optional[dict]:
    """A state dict saved with more groups than ``optimizer`` has, merged as the
    constructor merges them (its parameters renumbered in the merged order); others as
    they are (a mismatch is then PyTorch's error)."""
    saved = state_dict['param_groups']
    if len(saved) == len(optimizer.param_groups):
        return None
    merged = merge_param_groups(saved)   # ``params`` are indices here
    if [len(g['params']) for g in merged] != [len(g['params'])
                                              for g in optimizer.param_groups]:
        return None
    renumber = {old: new for new, old in enumerate(i for g in merged for i in g['params'])}
    for group in merged:
        group['params'] = [renumber[i] for i in group['params']]
    state = {renumber[i]: value for i, value in state_dict['state'].items()}
    return dict(state_dict, state=state, param_groups=merged)
