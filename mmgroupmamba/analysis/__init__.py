from .complexity import count_flops, count_params, scan_flops

__all__ = ['count_flops', 'count_params', 'scan_flops']
