from tools_import import _load

get_flops = _load('get_flops', 'analysis', 'get_flops.py')
