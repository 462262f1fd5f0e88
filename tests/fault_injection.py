"""Faults for the fault tests, put into real training runs (``tools/train.py`` in a child
process) through the config: ``custom_imports=dict(imports=['mmgroupmamba',
'fault_injection'])`` with ``tests/`` on ``PYTHONPATH``.

* ``SigkillAfterIter(iteration=N)``: the process kills itself with SIGKILL right after
  training iteration N (1-based, counted over the whole run), wherever that falls.
* ``FAULT_KILL_WRITING=<name>`` in the environment: the first file opened for writing
  whose name contains ``<name>`` (a temporary file of an atomic write included) gets half
  of the first block written to it, is flushed to disk, and the process kills itself
  with SIGKILL: a save killed half way through, whichever code does the writing.
"""
import builtins
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class SigkillAfterIter(Hook):

    priority = 'LOWEST'

    def __init__(self, iteration):
        self.iteration = iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.iteration:
            os.kill(os.getpid(), signal.SIGKILL)


class _DyingFile:

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[:len(data) // 2])
        self._f.flush()
        os.fsync(self._f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def _install_dying_open(name):
    real_open = builtins.open

    def open_(file, mode='r', *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and name in os.path.basename(file) \
                and any(c in mode for c in 'wax'):
            return _DyingFile(f)
        return f

    builtins.open = open_


if os.environ.get('FAULT_KILL_WRITING'):
    _install_dying_open(os.environ['FAULT_KILL_WRITING'])
