from .selective_scan import (SCAN_BACKENDS, available_backends, resolve_backend,
                             selective_scan)
from .dispatch import fused_kernels, fused_kernels_enabled
from .dwconv import depthwise_conv3x3_act
from .fused_layer_norm import layer_norm, modulated_layer_norm
from .tf32x3 import linear, linear_tf32x3
from .grouped_scan import (arrange_groups, grouped_selective_scan,
                           grouped_selective_scan_torch, restore_groups)
from .selective_scan_chunked import selective_scan_chunked
from .selective_scan_ref import selective_scan_ref

__all__ = ['selective_scan', 'selective_scan_ref', 'selective_scan_chunked',
           'available_backends', 'resolve_backend', 'SCAN_BACKENDS',
           'grouped_selective_scan', 'grouped_selective_scan_torch', 'arrange_groups',
           'restore_groups', 'depthwise_conv3x3_act', 'layer_norm',
           'modulated_layer_norm', 'linear', 'linear_tf32x3', 'fused_kernels',
           'fused_kernels_enabled']
