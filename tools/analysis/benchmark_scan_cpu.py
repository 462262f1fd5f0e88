"""CPU benchmark of the pure-PyTorch selective scan against the sequential reference.

    python tools/analysis/benchmark_scan_cpu.py [--batch 8] [--hw 56 56] [--dims 16 32 64 128]

Prints, from one run: time per call of the reference (one step per token) and of the
two-level chunked scan (about 2 sqrt(L) steps), their ratio, forward and forward+backward;
then the share of a GroupMamba-T 224x224 forward spent in the scan.
"""
import argparse
import math
import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

from mmgroupmamba.ops import selective_scan_chunked, selective_scan_ref  # noqa: E402


def timeit(fn, repeat=3):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def scan_inputs(batch, dim, length, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    t = dict(u=torch.randn(batch, dim, length, generator=g),
             delta=torch.randn(batch, dim, length, generator=g),
             A=-torch.rand(dim, 1, generator=g) - 0.5,
             B=torch.randn(batch, 1, length, generator=g),
             C=torch.randn(batch, 1, length, generator=g),
             D=torch.ones(dim), delta_bias=torch.randn(dim, generator=g) - 3)
    return {k: v.requires_grad_(requires_grad) for k, v in t.items()}


def bench_scans(batch, hw, dims, repeat):
    length = hw[0] * hw[1]
    chunk = math.ceil(math.sqrt(length))
    steps = chunk + math.ceil(length / chunk)
    print(f'selective scan, batch {batch}, L = {hw[0]}x{hw[1]} = {length}, state 1, '
          f'{torch.get_num_threads()} threads')
    print(f'sequential steps: reference {length}, chunked {steps} '
          f'(chunk {chunk}, {math.ceil(length / chunk)} chunks)')
    print(f'{"d":>5} {"pass":>9} {"reference ms":>13} {"chunked ms":>11} {"speed-up":>9}')
    for dim in dims:
        for mode in ('fwd', 'fwd+bwd'):
            grad = mode != 'fwd'

            def run(fn):
                inp = scan_inputs(batch, dim, length, grad)
                if grad:
                    fn(**inp).sum().backward()
                else:
                    with torch.no_grad():
                        fn(**inp)
            t_ref = timeit(lambda: run(selective_scan_ref), repeat)
            t_new = timeit(lambda: run(selective_scan_chunked), repeat)
            print(f'{dim:>5} {mode:>9} {t_ref * 1e3:>13.1f} {t_new * 1e3:>11.1f} '
                  f'{t_ref / t_new:>8.1f}x')


def scan_share_of_forward(img, batch, repeat):
    """Time spent inside the layers' scan call during a GroupMamba-T forward.

    The default (grouped) execution scans all four groups of a layer in one call of
    ``grouped_selective_scan``, which also applies softplus(dt), the D skip, the per-group
    norm and the gate; all of that counts as scan time here.
    """
    import mmgroupmamba.models.layers.group_mamba_layer as layer_module
    from mmgroupmamba.models import GroupMamba
    model = GroupMamba('tiny', out_indices=(3, ), final_norm=False,
                       execution=dict(scan_backend='pytorch')).eval()
    x = torch.randn(batch, 3, img, img)
    original = layer_module.grouped_selective_scan
    spent = [0.0]

    def timed_scan(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        return out

    with torch.no_grad():
        model(x)
        total = timeit(lambda: model(x), repeat)
        layer_module.grouped_selective_scan = timed_scan
        try:
            spent[0] = 0.0
            model(x)
            scan = spent[0]
        finally:
            layer_module.grouped_selective_scan = original
    if scan == 0:
        raise RuntimeError('no scan call was timed: the layer no longer calls '
                           'grouped_selective_scan; update this benchmark')
    print(f'\nGroupMamba-T forward, batch {batch}, {img}x{img}, CPU, chunked scan: '
          f'{total * 1e3:.0f} ms, of which selective scans (with their softplus, D skip, '
          f'norm and gate) {scan * 1e3:.0f} ms ({100 * scan / total:.0f}%)')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--hw', type=int, nargs=2, default=[56, 56])
    parser.add_argument('--dims', type=int, nargs='+', default=[16, 32, 64, 128])
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--model-batch', type=int, default=1)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--skip-model', action='store_true')
    args = parser.parse_args(argv)
    bench_scans(args.batch, args.hw, args.dims, args.repeat)
    if not args.skip_model:
        scan_share_of_forward(args.img_size, args.model_batch, args.repeat)


if __name__ == '__main__':
    main()
