"""Reading and writing checkpoint files: the package's one policy for both.

Reading. Every checkpoint file the package opens goes through
:func:`load_checkpoint_file`: mmengine's local-file loader (``--resume``, ``load_from``,
``tools/test.py CKPT``, ``init_cfg=Pretrained``, ``init_model``/``init_detector``; see
``compat.py``), the teacher checkpoint of distillation and
``tools/model_converters/official2mm.py``. It is ``torch.load(weights_only=True)`` with
the allow-list :func:`checkpoint_safe_globals`: besides tensors and plain Python
containers, exactly the types that checkpoints of mmengine 0.10.7 runs and of our tools
hold. Nothing else in a file is unpickled, so opening a checkpoint cannot run code from
it. A file that asks for anything else is refused (:class:`UnsafeCheckpointError`,
naming the file and the globals); ``MMGROUPMAMBA_TRUST_CHECKPOINTS=1`` loads such files
with full unpickling on purpose (for example the authors' training checkpoints, which
pickle a yacs config). A file that is not a complete torch checkpoint (truncated,
corrupt, another format) raises :class:`UnreadableCheckpointError` naming it.

Writing. :func:`atomic_write` writes to a temporary file beside the destination and
renames it into place, so a process killed while writing leaves the previous file as
it was (and no truncated file under the final name).
"""
import contextlib
import glob
import logging
import os
import os.path as osp
import pickle
import re
import zipfile

import numpy as np
import torch

TRUST_ENV = 'MMGROUPMAMBA_TRUST_CHECKPOINTS'

# A legacy (pre-zip) torch file starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b'\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19'
# How the weights-only unpickler names what it refused.
_REFUSED_PATTERNS = (r'GLOBAL (\S+) was not an allowed global',
                     r'unsupported GLOBAL (\S+) whose module')


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs globals outside the allow-list (it could run code on load)."""


class UnreadableCheckpointError(RuntimeError):
    """A file that is not a readable checkpoint (truncated, corrupt, another format)."""


def trusted_checkpoints() -> bool:
    """Whether ``MMGROUPMAMBA_TRUST_CHECKPOINTS`` switches full unpickling on."""
    return os.environ.get(TRUST_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on')


def _history_buffer_statistic(owner, name):
    """Stands in for ``builtins.getattr`` while unpickling.

    mmengine's ``HistoryBuffer`` (the message hub's log scalars) pickles its statistics
    methods, which pickle protocol 2 writes as ``getattr(HistoryBuffer, 'mean')``. A
    general ``getattr`` would reach anything, so only those lookups are answered.
    """
    from mmengine.logging import HistoryBuffer
    # the methods HistoryBuffer registers itself (_set_default_statistics); statistics
    # registered by users are plain functions, pickled under their own names
    if owner is HistoryBuffer and name in ('min', 'max', 'current', 'mean'):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'GLOBAL builtins.getattr was not an allowed global for getattr({owner!r}, '
        f'{name!r}): only the statistics methods of mmengine\'s HistoryBuffer are')


def checkpoint_safe_globals() -> list:
    """What checkpoints may hold besides tensors and Python containers, and why.

    torch already allows tensors, storages, ``torch.Size``, dtypes, ``OrderedDict``,
    ``Counter`` (mmengine's MultiStepLR milestones), ``set`` and ``bytes``. Added here:

    * numpy scalars: ``numpy._core.multiarray.scalar`` (``numpy.core...`` in files
      written with numpy 1.x) with ``numpy.dtype`` and the dtype classes numpy builds
      them with; mmengine stores numpy numbers in ``meta`` and in the message hub
      (e.g. the best score, log values);
    * numpy arrays: ``numpy.ndarray`` and ``numpy._core.multiarray._reconstruct`` (and
      the 1.x name): the value and count history of the message hub's log scalars. Only
      numeric, boolean and string dtypes: object arrays are not allowed;
    * ``mmengine.logging.history_buffer.HistoryBuffer``: the message hub's log scalars,
      restored by its ``__setstate__``, which only updates two dicts;
    * ``builtins.getattr`` restricted to ``HistoryBuffer``'s statistics methods
      (:func:`_history_buffer_statistic`), which a HistoryBuffer pickles.
    """
    from mmengine.logging import HistoryBuffer
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    # numeric, boolean, bytes and unicode dtypes; never 'O' (object)
    dtype_classes = {type(np.dtype(code)) for code in '?bhilqpBHILQPefdgFDGSU'}
    entries = [
        (multiarray.scalar, 'numpy._core.multiarray.scalar'),
        (multiarray.scalar, 'numpy.core.multiarray.scalar'),
        (multiarray._reconstruct, 'numpy._core.multiarray._reconstruct'),
        (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
        (np.ndarray, 'numpy.ndarray'),
        (np.dtype, 'numpy.dtype'),
        (HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (_history_buffer_statistic, 'builtins.getattr'),
    ]
    entries += [(cls, f'{cls.__module__}.{cls.__name__}') for cls in sorted(
        dtype_classes, key=lambda c: c.__name__)]
    return entries


def _is_complete_torch_file(filename) -> bool:
    """A zip checkpoint with intact records, or a file in torch's legacy format."""
    try:
        if zipfile.is_zipfile(filename):
            with zipfile.ZipFile(filename) as archive:
                names = archive.namelist()
                return (any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names)
                        and archive.testzip() is None)
        with open(filename, 'rb') as f:
            return f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError):
        return False


def unlisted_globals(filename) -> list:
    """The globals a checkpoint (zip format) asks for beyond torch's defaults and
    :func:`checkpoint_safe_globals`; [] for a file that loads under the policy. A
    static read of the pickle: nothing in it runs."""
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(filename))


def _refusal(filename, error):
    """What a weights-only load of ``filename`` refused (a phrase), or None if the error
    is not a refusal."""
    message = str(error)
    if not isinstance(error, pickle.UnpicklingError) \
            or 'Weights only load failed' not in message:
        return None
    named = [n for pattern in _REFUSED_PATTERNS for n in re.findall(pattern, message)]
    if not named and not _is_complete_torch_file(filename):
        return None  # garbage that the unpickler stumbled over: unreadable, not refused
    unlisted = []
    with contextlib.suppress(Exception):  # a zip checkpoint: all of them, by full name
        unlisted = unlisted_globals(filename)
    if unlisted:
        return f'the Python global(s) {", ".join(unlisted)}'
    reason = re.search(r'WeightsUnpickler error:\s*(.*?)\s*(?:Please use `torch|'
                       r'Check the documentation|$)', message, re.S)
    reason = reason.group(1) if reason else message
    if named:  # the legacy format, or a lookup our stand-ins refused
        return f'the Python global(s) {", ".join(named)}' + (
            '' if reason.startswith('Unsupported global') else f' ({reason})')
    return f'something the safe loader does not build ({reason})'


def _raise_if_unreadable(filename, error):
    if not _is_complete_torch_file(filename):
        first_line = (str(error).strip().splitlines() or [''])[0][:200]
        raise UnreadableCheckpointError(
            f'{filename} is not a readable checkpoint: it is truncated, corrupt or not a '
            f'file written by torch.save ({type(error).__name__}: {first_line}).') from None


def load_checkpoint_file(filename, map_location=None):
    """Load a local checkpoint file under the package's loading policy (module doc)."""
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as error:
        what = _refusal(filename, error)
        if what is None:
            _raise_if_unreadable(filename, error)
            raise
    if not trusted_checkpoints():
        raise UnsafeCheckpointError(
            f'Refused to load {filename}: it asks for {what}, which mmgroupmamba does not '
            f'unpickle (loading it could run code from the file). If you trust this '
            f'file, set the environment variable {TRUST_ENV}=1 to load it with full '
            'unpickling.') from None
    from mmengine.logging import print_log
    print_log(f'{TRUST_ENV}=1: loading {filename} with full unpickling; it asks for '
              f'{what}.', logger='current', level=logging.WARNING)
    try:
        return torch.load(filename, map_location=map_location, weights_only=False)
    except Exception as error:
        _raise_if_unreadable(filename, error)
        raise


@contextlib.contextmanager
def atomic_write(filename, mode='wb', **open_kwargs):
    """Open a temporary file beside ``filename``; when the block completes, it is
    flushed to disk and renamed to ``filename`` (one atomic step on POSIX file systems).

    A process killed inside the block leaves ``filename`` untouched, and a temporary
    file that :func:`remove_stale_temporaries` removes. Several processes may write the
    same file at once (mmengine's loggers do, from every rank): each replaces it whole.
    """
    filename = osp.abspath(osp.expanduser(str(filename)))
    directory, base = osp.split(filename)
    os.makedirs(directory, exist_ok=True)
    tmp = osp.join(directory, f'.{base}.{os.getpid()}.tmp')
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(filename):
    """Remove what writes of ``filename`` killed inside :func:`atomic_write` left; call
    it only where no other process may be writing ``filename`` right now."""
    directory, base = osp.split(osp.abspath(osp.expanduser(str(filename))))
    for stale in glob.glob(osp.join(glob.escape(directory), f'.{glob.escape(base)}.*.tmp')):
        with contextlib.suppress(OSError):
            os.remove(stale)


def save_checkpoint_file(obj, filename):
    """``torch.save(obj, filename)`` through :func:`atomic_write`."""
    with atomic_write(filename) as f:
        torch.save(obj, f)
