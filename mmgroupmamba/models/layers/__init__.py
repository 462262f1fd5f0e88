from .block import ClassBlock, GroupMambaBlock
from .downsample import Downsample
from .ffn import ConvFFN, Mlp
from .linear import InferenceCache, Linear
from .norm import LayerNorm
from .group_mamba_layer import ChannelAffinity, ModulatedGroupMamba
from .stem import ConvStem
from .vsss import SCAN_DIRECTIONS, VSSS, flatten_in_direction, unflatten_from_direction

__all__ = ['ConvStem', 'Downsample', 'VSSS', 'SCAN_DIRECTIONS', 'flatten_in_direction',
           'unflatten_from_direction', 'ChannelAffinity', 'ModulatedGroupMamba',
           'ConvFFN', 'Mlp', 'Linear', 'InferenceCache', 'LayerNorm', 'GroupMambaBlock', 'ClassBlock']
