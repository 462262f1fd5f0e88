"""The loading policy (mmgroupmamba/utils/checkpoint_io.py): checkpoints load with
``weights_only=True`` and an explicit allow-list on every loading path; a pickle that
would run code is refused with a message naming the file and the global; corrupt files
are named as unreadable; everything our tools write still loads."""
import os
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope

import mmgroupmamba  # noqa: F401
from demo_runs import write_demo_config
from mmgroupmamba.datasets import generate_classification_set
from mmgroupmamba.models import GroupMamba
from mmgroupmamba.utils import (TRUST_ENV, UnreadableCheckpointError, UnsafeCheckpointError,
                                convert_official_state_dict, load_checkpoint_file,
                                unlisted_globals)
from tools_import import load_tool, official2mm

SMALL = 'demo'  # GroupMamba.arch_zoo['demo']


class _RunsCode:
    """Unpickling this calls ``exec``, which writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").write("code ran")', )


class _RunsShell:
    """Unpickling this calls ``os.system``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return generate_classification_set(str(tmp_path_factory.mktemp('shapes')),
                                       num_train_per_class=2, num_val_per_class=1,
                                       image_size=32)


@pytest.fixture
def malicious(reference, tmp_path):
    """A real GroupMamba checkpoint (the authors' weights, our keys) with one entry that
    runs code on load: the marker file appears if anything unpickles it."""
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'malicious.pth'
    torch.save({'state_dict': convert_official_state_dict(reference['checkpoint']['model']),
                'meta': {'note': _RunsCode(marker)}}, path)
    return dict(path=str(path), marker=marker, state_dict=reference['checkpoint']['model'])


def _assert_refused(error, path, marker, name='builtins.exec'):
    message = str(error)
    assert path in message and name in message and TRUST_ENV in message, message
    assert not marker.exists(), 'the pickle ran code'


def _pretrained_backbone(path):
    return GroupMamba(SMALL, drop_path_rate=0., init_cfg=dict(type='Pretrained',
                                                              checkpoint=str(path)))


# ----------------------------------------------------------------- refused on every path
@pytest.mark.parametrize('kind', ['exec', 'os.system', 'raw pickle', 'raw pickle 4'])
def test_code_running_pickles_are_refused(kind, tmp_path, monkeypatch):
    monkeypatch.setenv(TRUST_ENV, '1' if kind == 'raw pickle 4' else '0')
    marker = tmp_path / 'code_ran'
    path = str(tmp_path / 'evil.pth')
    payload = {'state_dict': {'w': torch.ones(2)},
               'meta': (_RunsShell if kind == 'os.system' else _RunsCode)(marker)}
    if kind.startswith('raw pickle'):  # not torch's zip format: the legacy loading path
        payload['state_dict'] = {'w': [1.0, 1.0]}  # (plain pickle of a tensor is refused)
        with open(path, 'wb') as f:
            pickle.dump(payload, f, protocol=4 if kind.endswith('4') else 2)
    else:
        torch.save(payload, path)
    if kind == 'raw pickle 4':
        # not a torch file at all (torch's legacy reader stops at its first opcode):
        # unreadable, and not unpickled even with the switch on
        with pytest.raises(UnreadableCheckpointError, match='is not a readable checkpoint'):
            load_checkpoint_file(path)
        assert not marker.exists()
        return
    with pytest.raises(UnsafeCheckpointError) as error:
        load_checkpoint_file(path)
    # os.system is posix.system on Linux; the legacy reader names builtins without prefix
    name = {'exec': 'builtins.exec', 'os.system': f'{os.system.__module__}.system',
            'raw pickle': 'exec'}[kind]
    _assert_refused(error.value, path, marker, name=name)
    assert 'Refused to load' in str(error.value)


class _LooksUp:
    """Unpickles as ``getattr(torch.Tensor, 'add_')``: allowed globals, wrong lookup."""

    def __reduce__(self):
        return getattr, (torch.Tensor, 'add_')


def test_getattr_is_answered_only_for_history_buffer_statistics(tmp_path):
    from mmengine.logging import HistoryBuffer
    good, bad = str(tmp_path / 'good.pth'), str(tmp_path / 'bad.pth')
    torch.save({'hist': HistoryBuffer([1.0, 2.0], [1, 1])}, good)
    assert load_checkpoint_file(good)['hist'].mean() == 1.5
    torch.save({'x': _LooksUp()}, bad)
    with pytest.raises(UnsafeCheckpointError, match=r"getattr\(<class 'torch.Tensor'>"):
        load_checkpoint_file(bad)


def test_refused_by_mmengine_loader_load_from_and_init_cfg(malicious, monkeypatch):
    """CheckpointLoader (what load_from, --resume, tools/test.py and init_model use),
    load_checkpoint (load_from), init_cfg=Pretrained and the distillation teacher."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    from mmengine.runner import load_checkpoint
    from mmengine.runner.checkpoint import CheckpointLoader
    path, marker = malicious['path'], malicious['marker']
    for load in (lambda: CheckpointLoader.load_checkpoint(path, map_location='cpu'),
                 lambda: load_checkpoint(GroupMamba(SMALL), path, map_location='cpu'),
                 lambda: _pretrained_backbone(path).init_weights()):
        with pytest.raises(UnsafeCheckpointError) as error:
            load()
        _assert_refused(error.value, path, marker)
    from mmgroupmamba.models.classifiers.distill_classifier import load_teacher_checkpoint
    with pytest.raises(UnsafeCheckpointError) as error:
        load_teacher_checkpoint(torch.nn.Linear(2, 2), path)
    _assert_refused(error.value, path, marker)


def test_refused_by_the_converter(malicious, tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    path, marker = malicious['path'], malicious['marker']
    with pytest.raises(SystemExit) as error:
        official2mm.main([path, str(tmp_path / 'out.pth')])
    _assert_refused(error.value.code, path, marker)
    assert not (tmp_path / 'out.pth').exists()


def test_refused_by_tools_test_resume_and_load_from(malicious, shapes, tmp_path,
                                                    monkeypatch):
    """tools/test.py CKPT, tools/train.py --resume CKPT and load_from=CKPT: real runs of
    the demo config, each stopping at the load."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    path, marker = malicious['path'], malicious['marker']
    cfg = write_demo_config(tmp_path / 'demo.py', shapes, max_epochs=1)
    work = ['--work-dir', str(tmp_path / 'work')]
    runs = [('test', [cfg, path]), ('train', [cfg, '--resume', path]),
            ('train', [cfg, '--cfg-options', f'load_from={path}'])]
    for tool, args in runs:
        with DefaultScope.overwrite_default_scope('mmpretrain'), \
                pytest.raises(UnsafeCheckpointError) as error:
            load_tool(f'{tool}.py').main(args + work)
        _assert_refused(error.value, path, marker)
    assert not (tmp_path / 'work' / 'epoch_1.pth').exists()  # nothing trained


def test_the_switch_loads_a_trusted_file(malicious, monkeypatch):
    """MMGROUPMAMBA_TRUST_CHECKPOINTS=1 unpickles the whole file, on purpose: the
    fixture really runs code."""
    monkeypatch.setenv(TRUST_ENV, '1')
    checkpoint = load_checkpoint_file(malicious['path'])
    assert malicious['marker'].read_text() == 'code ran'
    assert 'backbone.patch_embeds.0.proj.weight' in checkpoint['state_dict']


# ------------------------------------------------------------------- unreadable files
def test_corrupt_and_truncated_files_are_named(reference, tmp_path):
    with open(reference['checkpoint_path'], 'rb') as f:
        data = f.read()
    files = {'truncated': data[:len(data) // 2], 'header only': data[:100],
             'empty': b'', 'garbage': os.urandom(4096), 'text': b'not a checkpoint\n'}
    # a flipped byte inside the stored tensor data (the zip's CRC check finds it)
    middle = bytearray(data)
    middle[len(data) // 2] ^= 0xFF
    files['corrupt'] = bytes(middle)
    for name, content in files.items():
        path = tmp_path / f'{name.replace(" ", "_")}.pth'
        path.write_bytes(content)
        for load in (lambda: load_checkpoint_file(path),
                     lambda: _pretrained_backbone(path).init_weights()):
            try:
                load()
            except UnreadableCheckpointError as error:
                assert str(path) in str(error), (name, str(error))
                assert 'is not a readable checkpoint' in str(error), (name, str(error))
            else:
                # a flipped byte inside a tensor's values is not detectable by torch
                assert name == 'corrupt', f'{name} loaded'


# --------------------------------------------- everything our tools write still loads
def test_released_format_and_converter_output_load(reference, tmp_path):
    assert unlisted_globals(reference['checkpoint_path']) == []
    out = str(tmp_path / 'converted.pth')
    official2mm.convert(reference['checkpoint_path'], out)
    assert unlisted_globals(out) == []
    converted = load_checkpoint_file(out)
    sd = convert_official_state_dict(reference['checkpoint']['model'])
    for k, v in sd.items():
        assert torch.equal(converted['state_dict'][k], v), k
    # the published format: a flat state dict
    flat = str(tmp_path / 'flat.pth')
    torch.save(reference['checkpoint']['model'], flat)
    model = _pretrained_backbone(flat)
    model.init_weights()
    torch.testing.assert_close(model.patch_embeds[0].proj.weight,
                               sd['backbone.patch_embeds.0.proj.weight'])


def test_numpy_values_of_either_numpy_name_load(tmp_path):
    """numpy scalars/arrays as mmengine stores them; files written under numpy 1.x name
    ``numpy.core.multiarray`` (rewritten here into the pickle of a numpy 2 file)."""
    path = tmp_path / 'np.pth'
    value = {'seed': np.int64(3), 'best': np.float64(0.5), 'flag': np.bool_(True),
             'hist': np.arange(4, dtype=np.float32), 'names': np.array(['a', 'bc'])}
    torch.save({'meta': value}, path)
    loaded = load_checkpoint_file(path)['meta']
    for k, v in value.items():
        assert type(loaded[k]) is type(v) and np.array_equal(loaded[k], v), k
    import zipfile
    old = tmp_path / 'np1.pth'
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, 'w') as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith('data.pkl'):
                assert b'numpy._core.multiarray' in data
                data = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
            dst.writestr(info, data)
    assert load_checkpoint_file(old)['meta']['seed'] == 3


def test_object_arrays_are_not_allowed(tmp_path):
    path = str(tmp_path / 'obj.pth')
    torch.save({'meta': np.array([1, 'x'], dtype=object)}, path)
    with pytest.raises(UnsafeCheckpointError, match='Refused to load'):
        load_checkpoint_file(path)


def test_demo_run_checkpoint_holds_only_allowed_globals(shapes, tmp_path):
    """A tools/train.py run of the classification demo (AdamW, LinearLR + cosine, EMA,
    StepSeedHook, the message hub with its HistoryBuffers and numpy values): its
    checkpoint asks for nothing outside the allow-list and is loaded by tools/test.py."""
    cfg = write_demo_config(
        tmp_path / 'demo.py', shapes, max_epochs=1, checkpoint="save_best='auto'",
        custom_hooks="dict(type='EMAHook', momentum=1e-2, priority='ABOVE_NORMAL', "
        "update_buffers=True), dict(type='StepSeedHook')")
    work = str(tmp_path / 'work')
    train = load_tool('train.py')
    test = load_tool('test.py')
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        train.main([cfg, '--work-dir', work])
        ckpt = osp.join(work, 'epoch_1.pth')
        raw = set(torch.serialization.get_unsafe_globals_in_checkpoint(ckpt))
        # what torch alone would refuse: the allow-list is needed, and enough
        assert 'mmengine.logging.history_buffer.HistoryBuffer' in raw, raw
        assert unlisted_globals(ckpt) == []
        checkpoint = load_checkpoint_file(ckpt)
        assert {'state_dict', 'ema_state_dict', 'optimizer', 'param_schedulers',
                'message_hub', 'meta'} <= set(checkpoint)
        metrics = test.main([cfg, ckpt, '--work-dir', work])
    assert 0 <= metrics['accuracy/top1'] <= 100

