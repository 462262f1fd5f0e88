from .selective_scan import (SCAN_BACKENDS, available_backends, resolve_backend,
                             selective_scan)
from .dwconv import depthwise_conv3x3_act
from .fused_layer_norm import layer_norm, modulated_layer_norm, residual_layer_norm
from .tf32x3 import linear, linear_tf32x3
from .affinity import channel_affinity, channel_affinity_ref
from .column_sums import column_sum, token_mean
from .directions import (DIRECTION_CODES, SCAN_DIRECTIONS, check_direction, direction_codes,
                         flatten_channels_last, flatten_in_direction, unflatten_channels_last,
                         unflatten_from_direction)
from .grouped_scan import (arrange_groups, grouped_selective_scan,
                           grouped_selective_scan_torch, restore_groups)
from .selective_scan_chunked import selective_scan_chunked
from .selective_scan_ref import selective_scan_ref

__all__ = ['selective_scan', 'selective_scan_ref', 'selective_scan_chunked',
           'available_backends', 'resolve_backend', 'SCAN_BACKENDS',
           'grouped_selective_scan', 'grouped_selective_scan_torch', 'arrange_groups',
           'restore_groups', 'depthwise_conv3x3_act', 'layer_norm',
           'modulated_layer_norm', 'residual_layer_norm', 'linear', 'linear_tf32x3',
           'column_sum', 'token_mean', 'channel_affinity', 'channel_affinity_ref',
           'SCAN_DIRECTIONS', 'DIRECTION_CODES', 'direction_codes',
           'check_direction', 'flatten_in_direction', 'unflatten_from_direction',
           'flatten_channels_last', 'unflatten_channels_last']
