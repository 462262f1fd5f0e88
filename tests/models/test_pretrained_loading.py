"""init_cfg=Pretrained and mmengine's own checkpoints, on torch >= 2.6."""
import numpy as np
import pytest
import torch

import mmgroupmamba  # noqa: F401
from mmgroupmamba.models import GroupMamba
from mmgroupmamba.utils import convert_official_state_dict

SMALL = 'demo'  # GroupMamba.arch_zoo['demo']


def _pretrained(path, **kwargs):
    model = GroupMamba(SMALL, drop_path_rate=0., init_cfg=dict(
        type='Pretrained', checkpoint=str(path), **kwargs))
    model.init_weights()
    return model


def test_released_checkpoint_loads_through_init_cfg(reference):
    model = _pretrained(reference['checkpoint_path'])
    sd = convert_official_state_dict(reference['checkpoint']['model'])
    torch.testing.assert_close(model.stages[2][1].mixer.groups[3].A_log,
                               sd['backbone.stages.2.1.mixer.groups.3.A_log'])
    # the released stage-4 (class-token) norm initialises the dense output norm
    torch.testing.assert_close(model.norm3.weight, sd['head.norm.weight'])
    model.eval()
    with torch.no_grad():
        out = model(reference['expected']['input'])[3]
    assert out.shape == (2, 128, 2, 3)


def test_our_checkpoint_with_numpy_meta_loads(reference, tmp_path):
    # mmengine checkpoints hold numpy values and more: torch>=2.6's weights_only default
    # rejects them unless our loader is in place.
    sd = convert_official_state_dict(reference['checkpoint']['model'])
    path = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': sd, 'meta': {'seed': np.int64(3), 'hist': np.zeros(2)},
                'message_hub': {'x': np.float64(1.)}}, path)
    model = _pretrained(path)
    torch.testing.assert_close(model.patch_embeds[0].proj.weight,
                               sd['backbone.patch_embeds.0.proj.weight'])
    from mmengine.runner import load_checkpoint
    ckpt = load_checkpoint(GroupMamba(SMALL), str(path), map_location='cpu',
                           revise_keys=[(r'^backbone\.', '')])
    assert ckpt['meta']['seed'] == 3


def test_mismatched_checkpoint_is_an_error(reference):
    arch = dict(GroupMamba.arch_zoo[SMALL], embed_dims=[32, 64, 96, 192])
    model = GroupMamba(arch, init_cfg=dict(
        type='Pretrained', checkpoint=reference['checkpoint_path']))
    with pytest.raises(ValueError, match='does not match this GroupMamba architecture'):
        model.init_weights()


def test_unrelated_checkpoint_is_an_error(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(3)}}, path)
    with pytest.raises(ValueError, match='has no weights for GroupMamba'):
        _pretrained(path)
