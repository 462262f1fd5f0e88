"""Our modules against the authors' code (fixtures made by the released implementation)."""
import os.path as osp
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from mmgroupmamba.models import GroupMamba
from mmgroupmamba.utils import (NotAGroupMambaCheckpoint, convert_official_state_dict,
                                infer_official_arch)

ATOL = 1e-4


def _small_arch(reference):
    arch = infer_official_arch(reference['checkpoint']['model'])
    assert arch == dict(stem_channels=16, embed_dims=[32, 64, 96, 128], depths=[1, 1, 2, 1],
                        mlp_ratios=[2, 2, 2, 2], num_classes=10, cls_mlp_ratio=2)
    return arch


def test_infer_tiny_arch_from_released_key_list(reference):
    pytest.importorskip('mmpretrain', reason='the classification head needs mmpretrain')
    shapes = {}
    with open(reference['tiny_keys_path']) as f:
        for line in f:
            key, shape = line.rstrip('\n').split('\t')
            shapes[key] = torch.empty(eval(shape) if shape != '()' else (), device='meta')
    assert len(shapes) == 1266
    arch = infer_official_arch(shapes)
    assert arch['stem_channels'] == 32 and arch['num_classes'] == 1000
    assert arch['embed_dims'] == GroupMamba.arch_zoo['tiny']['embed_dims']
    assert arch['depths'] == GroupMamba.arch_zoo['tiny']['depths']
    assert arch['mlp_ratios'] == GroupMamba.arch_zoo['tiny']['mlp_ratios']
    # every released key maps onto a parameter or buffer of our classifier
    converted = convert_official_state_dict(shapes)
    from mmgroupmamba.models import GroupMambaClsHead
    backbone = GroupMamba('tiny', out_indices=(3, ), final_norm=False, drop_path_rate=0)
    head = GroupMambaClsHead(1000, 448, mlp_ratio=4)
    ours = {f'backbone.{k}': v.shape for k, v in backbone.state_dict().items()}
    ours.update({f'head.{k}': v.shape for k, v in head.state_dict().items()})
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k] for k in ours)


def test_backbone_stage_outputs_match_released(reference):
    arch = _small_arch(reference)
    exp = reference['expected']
    model = GroupMamba({k: arch[k] for k in ('stem_channels', 'embed_dims', 'depths',
                                             'mlp_ratios')},
                       out_indices=(0, 1, 2, 3), final_norm=False, drop_path_rate=0.)
    sd = convert_official_state_dict(reference['checkpoint']['model'])
    model.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith('backbone.')})
    model.eval()
    raw = []
    # a stage's raw output is its last block's (which also returns the stage norm's
    # output where it runs fused with the last residual add)
    hooks = [s[-1].register_forward_hook(
        lambda m, i, o: raw.append((o if torch.is_tensor(o) else o[0]).permute(0, 3, 1, 2)))
        for s in model.stages]
    with torch.no_grad():
        outs = model(exp['input'])
    for h in hooks:
        h.remove()
    for ours, theirs in zip(raw, exp['stage_outputs']):
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    # outputs 0-2 are the stage-normed maps the next stage consumes; 3 is the raw stage
    for i in range(3):
        norm = getattr(model, f'norm{i}')
        torch.testing.assert_close(outs[i], norm(raw[i].permute(0, 2, 3, 1))
                                   .permute(0, 3, 1, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(outs[3], exp['stage_outputs'][3], atol=ATOL, rtol=0)


@pytest.fixture(scope='module')
def converted(reference, tmp_path_factory):
    """The released checkpoint through our converter, for mmpretrain's ``init_model``."""
    pytest.importorskip('mmpretrain', reason='init_model and the head need mmpretrain')
    out = tmp_path_factory.mktemp('converted')
    dst, cfg = str(out / 'groupmamba_small.pth'), str(out / 'groupmamba_small.py')
    subprocess.run([sys.executable, osp.join(REPO_ROOT, 'tools', 'model_converters',
                                             'official2mm.py'),
                    reference['checkpoint_path'], dst, '--out-config', cfg],
                   check=True, cwd=REPO_ROOT)
    return dst, cfg


def test_converter_and_init_model_reproduce_released_logits(reference, converted):
    from mmpretrain.apis import init_model
    dst, cfg = converted
    exp = reference['expected']
    model = init_model(cfg, dst, device='cpu')
    assert type(model).__name__ == 'ImageClassifier'
    with torch.no_grad():
        logits = model(exp['input'], mode='tensor')
    torch.testing.assert_close(logits, exp['logits_eval'], atol=ATOL, rtol=0)

    # Train mode (drop path 0, BatchNorm on batch statistics) returns both heads.
    model.train()
    with torch.no_grad():
        cls_logits, dist_logits = model(exp['input'], mode='tensor')
    torch.testing.assert_close(cls_logits, exp['logits_train_head'], atol=ATOL, rtol=0)
    torch.testing.assert_close(dist_logits, exp['logits_train_dist_head'], atol=ATOL,
                               rtol=0)


def test_fixture_logits_move_by_more_than_1e3_with_fp16_weights_alone(reference, converted):
    """The floor of any fp16 (AMP) execution of this checkpoint: rounding only the
    weights to fp16 -- computing everything else in float32 -- moves the fixture's
    logits by more than 1e-3, so the AMP tests compare with the released execution's
    own fp16 error instead of a flat 1e-3 (see test_triton_paths)."""
    from mmpretrain.apis import init_model
    dst, cfg = converted
    exp = reference['expected']
    model = init_model(cfg, dst, device='cpu')
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:  # what autocast casts: the matmul and conv weights
                p.copy_(p.half().float())
        logits = model(exp['input'], mode='tensor')
    assert (logits - exp['logits_eval']).abs().max() > 1e-3


def test_predict_path_uses_mean_of_heads(reference, converted):
    from mmpretrain.apis import init_model
    dst, cfg = converted
    exp = reference['expected']
    model = init_model(cfg, dst, device='cpu')
    with torch.no_grad():
        samples = model(exp['input'], mode='predict')
    scores = torch.stack([s.pred_score for s in samples])
    torch.testing.assert_close(scores, exp['logits_eval'].softmax(-1), atol=ATOL, rtol=0)


def test_converter_accepts_wrappers_and_flat_files(reference, tmp_path):
    from tools_import import official2mm
    sd = reference['checkpoint']['model']
    for name, payload in [('flat', sd), ('ema', {'model_ema': sd, 'epoch': 3}),
                          ('sd', {'state_dict': sd}),
                          ('module', {'model': {f'module.{k}': v for k, v in sd.items()}})]:
        src = tmp_path / f'{name}.pth'
        torch.save(payload, src)
        arch = official2mm.convert(str(src), str(tmp_path / f'{name}_mm.pth'))
        assert arch['embed_dims'] == [32, 64, 96, 128]


def test_converter_refuses_unrelated_checkpoint(tmp_path):
    src = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(64, 3, 7, 7),
                               'fc.weight': torch.zeros(1000, 2048)}}, src)
    result = subprocess.run([sys.executable, osp.join(REPO_ROOT, 'tools',
                                                      'model_converters', 'official2mm.py'),
                             str(src), str(tmp_path / 'out.pth')],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode != 0
    assert 'not a released GroupMamba checkpoint' in result.stderr
    assert not (tmp_path / 'out.pth').exists()
    with pytest.raises(NotAGroupMambaCheckpoint):
        convert_official_state_dict({'conv1.weight': torch.zeros(1)})
