"""``GroupMambaStage``: each residual add fused with the LayerNorm after it (the FFN's,
the next block's input norm, the stage's output norm) computes what the blocks compute
one by one, drop-path masks and gradients included: on CPU through the PyTorch
composition, and through the Triton kernels in the interpreter (a subprocess; skips
without Triton)."""
import torch

from conftest import requires_triton_interpreter, run_in_triton_interpreter
from mmgroupmamba.execution import configure_execution
from mmgroupmamba.models.layers import GroupMambaBlock, GroupMambaStage, LayerNorm


def _stage_and_input(seed=0):
    torch.manual_seed(seed)
    stage = GroupMambaStage(*[GroupMambaBlock(32, 2., drop_path=0.3) for _ in range(3)])
    norm = LayerNorm(32, eps=1e-6)
    for p in list(stage.parameters()) + list(norm.parameters()):
        p.data.add_(0.05 * torch.randn_like(p))    # non-trivial norms and biases
    return stage.train(), norm, torch.randn(4, 5, 6, 32, requires_grad=True)


def _one_by_one(stage, norm, x):
    for block in stage:
        x = block(x)
    return norm(x)


def _check_fused_stage_matches_blocks(fused_kernels, atol):
    stage, norm, x = _stage_and_input()
    for m in (stage, norm):
        configure_execution(m, fused_kernels=fused_kernels)
    params = [x] + list(stage.parameters()) + list(norm.parameters())
    results = []
    for run in (lambda: stage(x, norm), lambda: _one_by_one(stage, norm, x)):
        torch.manual_seed(7)                    # the same drop-path masks, if in order
        out = run()
        grads = torch.autograd.grad(out.square().mean(), params)
        results.append((out, grads))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out, ref, atol=atol, rtol=atol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=atol * max(1., r.abs().max().item()), rtol=atol)
    # without the output norm the stage returns the last block's output
    torch.manual_seed(7)
    raw = stage(x)
    torch.manual_seed(7)
    assert torch.allclose(norm(raw), ref, atol=atol, rtol=atol)


def test_fused_stage_matches_the_blocks_one_by_one():
    _check_fused_stage_matches_blocks(True, 1e-6)


def test_stage_with_checkpointing_runs_the_blocks_one_by_one():
    stage, norm, x = _stage_and_input()
    stage.eval()
    ref = _one_by_one(stage, norm, x)
    configure_execution(stage, with_cp=True)
    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(len(i)))
             for m in stage]
    torch.testing.assert_close(stage(x, norm), ref)
    assert calls == [1, 1, 1]     # each block called with its input alone
    # an input without grad is not checkpointed: fused
    torch.testing.assert_close(stage(x.detach(), norm), ref)
    assert calls[3:] == [3, 3, 3]
    for h in hooks:
        h.remove()


_INTERPRET_SCRIPT = '''
    import test_stage_fusion as t
    t._check_fused_stage_matches_blocks(True, 1e-4)
    print('interpreter ok')
'''


@requires_triton_interpreter
def test_fused_stage_in_triton_interpreter():
    run_in_triton_interpreter(_INTERPRET_SCRIPT)
