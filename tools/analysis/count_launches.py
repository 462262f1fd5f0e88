"""Count the kernel launches of one eager backbone step, by operator, on any machine.

An eager GroupMamba step is bound by host time: every launch costs the host tens of
microseconds. This counts them without a GPU profiler: the aten operators that reach a
device (a :class:`~torch.utils._python_dispatch.TorchDispatchMode`; views, allocations
and other operators that launch nothing are left out) and the Triton kernels (each
launch, by kernel name). Without CUDA the Triton kernels run in Triton's CPU
interpreter (``TRITON_INTERPRET=1``, set here), so a CPU machine counts the same
operators as a GPU one; on a GPU a few aten operators launch more than one kernel
(the profiler's counts, ``benchmark.py --profile``, are then somewhat higher).

The step is the backbone's forward (training: and its backward; no optimizer) under
bf16 autocast or in float32, counted after one uncounted step (autotuning, caches)::

    python tools/analysis/count_launches.py                      # GroupMamba-T, 1 x 64x64
    python tools/analysis/count_launches.py --arch demo --precision fp32 --top 10
"""
import argparse
import collections
import contextlib
import os
import sys

import torch

# operators that launch nothing: allocations, metadata, scalars, dtype queries
_NO_LAUNCH = {'empty', 'empty_like', 'empty_strided', 'new_empty', 'new_empty_strided',
              'promote_types', 'result_type', 'lift_fresh', 'detach', 'alias',
              'is_same_size', 'set_', 'sym_size', 'sym_stride', 'sym_numel',
              'sym_storage_offset', '_local_scalar_dense', 'resize_', '_unsafe_view',
              '_reshape_alias'}
# operators that copy only sometimes (seen whole where autograd does not decompose them):
# a launch when the result does not share its input's memory
_MAYBE_COPY = {'to', 'contiguous', 'reshape', 'flatten', 'type_as'}


class LaunchCounter:
    """Counts aten operators that launch work and Triton kernel launches while active
    (``with counter: ...``); the operators Triton's interpreter runs for its own
    bookkeeping are not counted."""

    def __init__(self):
        self.aten = collections.Counter()
        self.triton = collections.Counter()
        self._in_kernel = False

    @property
    def total(self) -> int:
        return sum(self.aten.values()) + sum(self.triton.values())

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        counter = self

        class _Mode(TorchDispatchMode):

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                out = func(*args, **(kwargs or {}))
                if name in _MAYBE_COPY:   # (their schemas allow aliasing: ``is_view``)
                    launches = not _shares_memory(out, args[0])
                else:
                    launches = not (func.is_view or name in _NO_LAUNCH)
                if launches and not counter._in_kernel:
                    counter.aten[name] += 1
                return out

        self._stack = contextlib.ExitStack()
        for cls in _triton_launchers():
            self._stack.enter_context(self._patched(cls))
        self._stack.enter_context(_Mode())
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    @contextlib.contextmanager
    def _patched(self, cls):
        run = cls.run
        counter = self

        def counted(kernel, *args, **kwargs):
            counter.triton[kernel.fn.__name__ if hasattr(kernel, 'fn') else
                           kernel.__name__] += 1
            nested, counter._in_kernel = counter._in_kernel, True
            try:
                return run(kernel, *args, **kwargs)
            finally:
                counter._in_kernel = nested

        cls.run = counted
        try:
            yield
        finally:
            cls.run = run


def _shares_memory(a, b) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


def _triton_launchers():
    """The classes whose ``run`` launches one Triton kernel (the JIT and, on CPU, the
    interpreter's)."""
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        return []
    launchers = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        launchers.append(InterpretedFunction)
    except ImportError:
        pass
    return launchers


def count_step(model, x, mode: str, precision: str = 'amp') -> LaunchCounter:
    """The launches of one step of ``model`` on ``x`` (``mode``: ``train``, forward and
    backward of the outputs' mean; ``infer``, forward under ``inference_mode``), counted
    after one uncounted step."""
    amp = (torch.autocast(x.device.type, dtype=torch.bfloat16) if precision == 'amp'
           else contextlib.nullcontext())

    def step():
        if mode == 'infer':
            with torch.inference_mode(), amp:
                model(x)
            return
        with amp:
            out = model(x)
        sum(o.float().mean() for o in out).backward()

    model.train(mode == 'train')
    step()
    model.zero_grad(set_to_none=True)
    counter = LaunchCounter()
    with counter:
        step()
    return counter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='tiny')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--img-size', type=int, nargs=2, default=(64, 64), metavar=('H', 'W'))
    parser.add_argument('--precision', choices=('amp', 'fp32'), default='amp')
    parser.add_argument('--mode', nargs='+', choices=('train', 'infer'),
                        default=['train', 'infer'])
    parser.add_argument('--top', type=int, default=25, help='operators listed per step')
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda:   # before Triton is imported (by the model's ops)
        os.environ['TRITON_INTERPRET'] = '1'
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
    from mmgroupmamba.models import GroupMamba
    device = torch.device('cuda' if cuda else 'cpu')
    # as mmdet and mmseg build it (four NCHW outputs, final norms), the Triton scan
    model = GroupMamba(args.arch, out_indices=(0, 1, 2, 3), final_norm=True,
                       drop_path_rate=0.2, execution=dict(scan_backend='triton')).to(device)
    x = torch.randn(args.batch_size, 3, *args.img_size, device=device)
    where = 'CUDA' if cuda else 'CPU, Triton interpreter'
    for mode in args.mode:
        c = count_step(model, x, mode, args.precision)
        print(f'{args.arch} {mode} {args.precision}, {args.batch_size} x '
              f'{args.img_size[0]}x{args.img_size[1]} ({where}): {c.total} launches '
              f'= {sum(c.aten.values())} aten + {sum(c.triton.values())} Triton')
        for name, n in c.aten.most_common(args.top):
            print(f'  {n:6d}  aten::{name}')
        for name, n in c.triton.most_common():
            print(f'  {n:6d}  triton {name}')


if __name__ == '__main__':
    main()
