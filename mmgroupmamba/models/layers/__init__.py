from mmgroupmamba.ops.directions import (SCAN_DIRECTIONS, flatten_in_direction,
                                         unflatten_from_direction)
from .block import ClassBlock, GroupMambaBlock, GroupMambaStage
from .downsample import Downsample
from .drop_path import ResidualDropPath
from .ffn import ConvFFN, Mlp
from .linear import Linear
from .norm import LayerNorm
from .group_mamba_layer import ChannelAffinity, ModulatedGroupMamba
from .stem import ConvStem
from .vsss import VSSS

__all__ = ['ConvStem', 'Downsample', 'VSSS', 'SCAN_DIRECTIONS', 'flatten_in_direction',
           'unflatten_from_direction', 'ChannelAffinity', 'ModulatedGroupMamba',
           'ConvFFN', 'Mlp', 'Linear', 'LayerNorm', 'ResidualDropPath', 'GroupMambaBlock',
           'GroupMambaStage', 'ClassBlock']
