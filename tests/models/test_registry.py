"""``dict(type='GroupMamba')`` builds from every codebase's registry and default scope."""
import pytest
import torch
from mmengine.registry import DefaultScope

import mmgroupmamba  # noqa: F401
from conftest import MICRO_ARCH

CFG = dict(type='GroupMamba', arch='tiny', out_indices=(0, 1, 2, 3), drop_path_rate=0.2)


@pytest.mark.parametrize('scope,registry_module', [
    ('mmpretrain', 'mmpretrain.registry'),
    ('mmdet', 'mmdet.registry'),
    ('mmseg', 'mmseg.registry'),
])
def test_build_backbone_in_each_scope(scope, registry_module):
    # the set-up (tools/setup_env.sh) checks that all three import; a machine with only
    # some of them (the GPU machine has no mmdet / mmseg) tests those it has
    MODELS = pytest.importorskip(registry_module).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        backbone = MODELS.build(CFG)
    assert type(backbone).__name__ == 'GroupMamba'
    assert backbone.embed_dims == [64, 128, 348, 448]


def test_custom_imports_in_a_config(tmp_path):
    from mmengine.config import Config
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(
        "custom_imports = dict(imports=['mmgroupmamba'], allow_failed_imports=False)\n"
        "default_scope = 'mmdet'\n"
        "model = dict(type='GroupMamba', arch='small', out_indices=(3, ))\n")
    cfg = Config.fromfile(str(cfg_file))
    MODELS = pytest.importorskip('mmdet.registry').MODELS
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    assert model.embed_dims[-1] == 512


def test_classifier_builds_in_mmpretrain():
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='GroupMamba', arch=MICRO_ARCH, out_indices=(3, ),
                          final_norm=False),
            head=dict(type='GroupMambaClsHead', num_classes=5, in_channels=64)))
    model.eval()
    assert model(torch.randn(2, 3, 32, 32), mode='tensor').shape == (2, 5)
    model.train()
    cls_logits, dist_logits = model(torch.randn(2, 3, 32, 32), mode='tensor')
    assert cls_logits.shape == dist_logits.shape == (2, 5)
