import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import MICRO_ARCH
from mmgroupmamba.models import GroupMamba, GroupMambaClsHead

SMALL_ARCH = MICRO_ARCH


def _classifier_params(arch):
    backbone = GroupMamba(arch, out_indices=(3, ), final_norm=False)
    head = GroupMambaClsHead(1000, backbone.embed_dims[-1],
                             mlp_ratio=backbone.arch_settings['mlp_ratios'][-1])
    return sum(p.numel() for m in (backbone, head) for p in m.parameters())


@pytest.mark.parametrize('arch,released', [('tiny', 23.36), ('small', 34.78),
                                           ('base', 57.15)])
def test_param_counts_match_released(arch, released):
    assert round(_classifier_params(arch) / 1e6, 2) == released


@pytest.mark.parametrize('hw', [(32, 32), (33, 47), (64, 96), (97, 35)])
def test_multiscale_outputs_for_odd_and_tiny_inputs(hw):
    model = GroupMamba(SMALL_ARCH).eval()
    outs = model(torch.randn(2, 3, *hw))
    assert len(outs) == 4
    h, w = hw
    for i, (out, dim) in enumerate(zip(outs, SMALL_ARCH['embed_dims'])):
        # every embedding is a stride-2 conv with padding 1: ceil division per stage
        for _ in range(i + 2):
            h, w = (h + 1) // 2, (w + 1) // 2
        assert out.shape == (2, dim, h, w)
        assert out.is_contiguous()
        h, w = hw


def test_out_indices_and_final_norm():
    model = GroupMamba(SMALL_ARCH, out_indices=(1, 3), final_norm=False)
    outs = model(torch.randn(1, 3, 40, 40))
    assert [o.shape[1] for o in outs] == [32, 64]
    assert not hasattr(model, 'norm3')
    assert hasattr(GroupMamba(SMALL_ARCH, out_indices=(-1, )), 'norm3')
    with pytest.raises(ValueError, match='out_indices'):
        GroupMamba(SMALL_ARCH, out_indices=(4, ))


def test_presets_by_short_and_long_name():
    assert GroupMamba.arch_zoo['t'] == GroupMamba.arch_zoo['tiny']
    model = GroupMamba('S', out_indices=(3, ))
    assert model.embed_dims == [64, 128, 348, 512]
    assert [len(s) for s in model.stages] == [3, 4, 16, 3]


def test_bad_arch_and_width_errors():
    with pytest.raises(KeyError, match="Unknown GroupMamba arch 'huge'"):
        GroupMamba('huge')
    with pytest.raises(ValueError, match='divisible by 4'):
        GroupMamba(dict(SMALL_ARCH, embed_dims=[16, 32, 50, 64]))
    with pytest.raises(ValueError, match='needs 4 entries'):
        GroupMamba(dict(SMALL_ARCH, depths=[1, 1, 1]))
    with pytest.raises(KeyError, match='missing'):
        GroupMamba(dict(embed_dims=[16, 32, 48, 64]))


def test_wrong_input_channels_error():
    model = GroupMamba(SMALL_ARCH)
    with pytest.raises(ValueError, match=r'expects \(B, 3, H, W\)'):
        model(torch.randn(1, 1, 32, 32))
    gray = GroupMamba(SMALL_ARCH, in_channels=1)
    assert len(gray(torch.randn(1, 1, 32, 32))) == 4


def test_odd_group_width_runs():
    # The released T/S models have 348 channels in stage 3: 87 per group.
    arch = dict(SMALL_ARCH, embed_dims=[16, 32, 348 // 6 * 2, 64])
    outs = GroupMamba(arch)(torch.randn(1, 3, 32, 32))
    assert outs[2].shape[1] == 116  # 29 channels per group


def test_backward_reaches_every_parameter():
    model = GroupMamba(SMALL_ARCH, drop_path_rate=0.1)
    model.init_weights()
    outs = model(torch.randn(2, 3, 35, 45))
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_activation_checkpointing_gives_same_gradients():
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(1)
        model = GroupMamba(SMALL_ARCH, with_cp=with_cp, drop_path_rate=0.)
        model(x)[-1].sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_frozen_stages_and_norm_eval():
    model = GroupMamba(SMALL_ARCH, frozen_stages=1, norm_eval=True)
    model.train()
    for i in range(2):
        assert all(not p.requires_grad for p in model.stages[i].parameters())
        assert all(not p.requires_grad for p in model.patch_embeds[i].parameters())
        assert not model.stages[i].training
    assert all(p.requires_grad for p in model.stages[2].parameters())
    assert model.stages[2].training
    bns = [m for m in model.patch_embeds[0].modules() if isinstance(m, _BatchNorm)]
    assert bns and not any(bn.training for bn in bns)


def test_fresh_init_follows_mamba():
    model = GroupMamba(SMALL_ARCH)
    model.init_weights()
    vsss = model.stages[0][0].mixer.groups[0]
    dt = torch.nn.functional.softplus(vsss.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert torch.all(vsss.D == 1)
    assert torch.all(vsss.A_log == 0)  # log(1) for state size 1
    assert model.stages[0][0].mixer.proj.weight.std() < 0.05


def test_non_floating_images_are_a_clear_error():
    model = GroupMamba(SMALL_ARCH).eval()
    for dtype in (torch.uint8, torch.int64, torch.bool):
        with pytest.raises(TypeError, match=rf'floating-point images .*got {dtype}'):
            model(torch.zeros(1, 3, 32, 32, dtype=dtype))


def test_stages_after_the_last_output_are_not_run_and_get_no_gradient():
    """They would feed nothing: skipped, their parameters kept (state dict unchanged)
    but left out of training, so DDP without find_unused_parameters works."""
    full = GroupMamba(SMALL_ARCH)
    model = GroupMamba(SMALL_ARCH, out_indices=(0, 2)).train()
    assert list(model.state_dict()) == list(full.state_dict())
    calls = []
    model.stages[3].register_forward_hook(lambda *args: calls.append(1))
    sum(o.sum() for o in model(torch.randn(2, 3, 32, 32))).backward()
    assert not calls
    for name, p in model.named_parameters():
        after = name.startswith(('stages.3.', 'patch_embeds.3.', 'norm3.'))
        assert p.requires_grad != after, name
        assert (p.grad is None) == after, name
    model.train()  # re-freezing on train() keeps it so
    assert not any(p.requires_grad for p in model.stages[3].parameters())
