"""The backbone's ``compile`` option: the fused Triton kernels are custom operators, so
``torch.compile`` traces the backbone as one graph (no graph breaks), one compilation
serves several image sizes, and the compiled forward and backward equal the eager ones.

On CPU the kernels run in Triton's interpreter (a subprocess with ``TRITON_INTERPRET=1``)
and the graphs run through Dynamo's counting backend (the traced graph executed as it
is) and ``aot_eager`` (AOTAutograd: the operators' fake-tensor and autograd
registrations), not Inductor, whose CPU code generation specialises convolution sizes.
On a GPU the same checks run with Inductor at detection-like sizes, and the released
fixture through the compiled backbone.
"""
import copy

import pytest
import torch

from conftest import (released_small_classifier, requires_triton_gpu,
                      requires_triton_interpreter, run_in_triton_interpreter)
from mmgroupmamba.models import GroupMamba
from mmgroupmamba.runtime import runners

SMALL = 'demo'  # GroupMamba.arch_zoo['demo']


def test_compile_argument():
    with pytest.raises(TypeError, match='compile must be'):
        GroupMamba(SMALL, execution=dict(compile='yes'))
    with pytest.raises(ValueError, match='set one of them'):
        GroupMamba(SMALL, execution=dict(compile=True, cuda_graph=True))
    assert GroupMamba(SMALL, execution=dict(compile={})).execution.compile_options == {}
    assert GroupMamba(SMALL).execution.compile_options is None
    assert GroupMamba(SMALL, execution=dict(compile=True)).execution.compile_options == {
        'mode': 'reduce-overhead'}


def test_compile_mode_joins_inductor_options(monkeypatch):
    """``torch.compile`` refuses a ``mode`` together with ``options`` (and the backbone
    always passes options): the mode's settings are passed as options instead.
    ``compile=True`` is Inductor's CUDA graphs with the dynamic sides, matmul padding
    off (its guards bound the sides by the first size's)."""
    from mmgroupmamba.runtime.compiled_forward import CompiledForward
    calls = []
    monkeypatch.setattr(torch, 'compile', lambda fn, **kwargs: calls.append(kwargs) or fn)

    CompiledForward(lambda x: x, dict(mode='max-autotune-no-cudagraphs', fullgraph=True))
    assert calls and all('mode' not in kw for kw in calls)
    assert calls[0]['options']['max_autotune'] and calls[0]['fullgraph']

    calls.clear()
    CompiledForward(lambda x: x, dict(mode='reduce-overhead', dynamic=False))
    assert calls[0]['options']['triton.cudagraphs'] and calls[0]['dynamic'] is False
    assert 'shape_padding' not in calls[0]['options']   # static sizes: Inductor's default

    calls.clear()
    policy = GroupMamba(SMALL, execution=dict(compile=True)).execution
    compiled = CompiledForward(lambda x: x, policy.compile_options)
    assert calls[0]['options']['triton.cudagraphs'] and compiled.records_graphs
    assert calls[0]['options']['shape_padding'] is False and 'dynamic' not in calls[0]

    calls.clear()
    CompiledForward(lambda x: x, dict(mode='max-autotune-no-cudagraphs',
                                      options={'max_autotune': False}))
    assert calls[0]['options']['max_autotune'] is False   # explicit options win

    calls.clear()
    assert not CompiledForward(lambda x: x, dict(mode='default')).records_graphs
    with pytest.raises(ValueError, match="Unknown torch.compile mode 'fastest'"):
        CompiledForward(lambda x: x, dict(mode='fastest'))


def test_compiled_backbone_copies_and_pickles():
    """EMA hooks deep-copy the model: the copy compiles its own forward (the compiled
    function of the original holds the original's parameters)."""
    import pickle
    model = GroupMamba(SMALL, execution=dict(compile=dict(backend='eager'))).eval()
    x = torch.randn(1, 3, 64, 64)
    outs = model(x)
    twin = copy.deepcopy(model)
    assert runners(twin).compiled is None
    for a, b in zip(outs, twin(x)):
        assert torch.equal(a, b)
    assert runners(twin).compiled is not runners(model).compiled
    pickle.loads(pickle.dumps(model))


def test_pytorch_path_traces_without_graph_breaks():
    model = GroupMamba(SMALL, drop_path_rate=0.1)
    x = torch.randn(1, 3, 64, 96)
    for mode in ('train', 'eval'):
        getattr(model, mode)()
        explained = torch._dynamo.explain(model.forward_features)(x)
        assert explained.graph_break_count == 0, (mode, explained.break_reasons)


_INTERPRET_SCRIPT = '''
    import torch
    from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend
    from test_compile import SMALL
    from mmgroupmamba.models import GroupMamba

    def pair(backend):
        torch.manual_seed(0)
        model = GroupMamba(SMALL, drop_path_rate=0.,
                           execution=dict(scan_backend='triton', compile=dict(backend=backend)))
        eager = GroupMamba(SMALL, drop_path_rate=0., execution=dict(scan_backend='triton'))
        eager.load_state_dict(model.state_dict())
        return model, eager

    def check_step(model, eager, size):
        # (batch 2: PyTorch's CPU convolution picks its algorithm by input size, and its
        # fake-tensor rule guards on that; at batch 1 these sizes straddle a threshold)
        x = torch.randn(2, 3, *size)
        outs, ref = model(x), eager(x)
        sum(o.square().mean() for o in outs).backward()
        sum(o.square().mean() for o in ref).backward()
        for a, r in zip(outs, ref):
            torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)
        for (name, p), q in zip(model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
        model.zero_grad(); eager.zero_grad()

    # the fused kernels are in the traced graph, as operators, with no graph break
    model, eager = pair('eager')
    x = torch.randn(1, 3, 64, 64)
    for mode in ('train', 'eval'):
        getattr(model, mode)()
        explained = torch._dynamo.explain(model.forward_features)(x)
        assert explained.graph_break_count == 0, (mode, explained.break_reasons)
        code = '\\n'.join(g.code for g in explained.graphs)
        assert 'mmgroupmamba.grouped_scan' in code and 'mmgroupmamba.dwconv3x3_act' in code

    # training steps at three sizes: one compilation, the eager outputs and gradients
    counter = CompileCounter()
    model, eager = pair(counter)
    for size in [(64, 64), (64, 96), (96, 64)]:
        check_step(model, eager, size)
    assert counter.frame_count == 1, counter.frame_count

    # through AOTAutograd: the operators' fake tensors and autograd formulas
    counter = CompileCounterWithBackend('aot_eager')
    model, eager = pair(counter)
    check_step(model, eager, (64, 96))
    print('interpreter ok')
'''


@requires_triton_interpreter
def test_fused_operators_compile_in_the_interpreter():
    run_in_triton_interpreter(_INTERPRET_SCRIPT)


def _ddp_compiled_steps(rank, world, init_file, out_dir):
    """One process of :func:`test_compiled_backbone_under_ddp_and_autocast`: for float32
    (Dynamo's graph run eagerly) and for bf16 autocast (through AOTAutograd, as Inductor
    runs it; its trace takes ~2 minutes on a CI machine), two training steps of a
    compiled backbone wrapped in DDP (the second runs DDP's check that every gradient of
    the first was reduced) on this rank's half of a fixed batch; rank 0 saves the
    averaged gradients."""
    from torch.nn.parallel import DistributedDataParallel
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}',
                                         rank=rank, world_size=world)
    try:
        x = _ddp_batch(world)[2 * rank:2 * rank + 2]
        for amp in (False, True):
            torch.manual_seed(0)
            backend = 'aot_eager' if amp else 'eager'
            model = GroupMamba(SMALL, drop_path_rate=0.,
                               execution=dict(compile=dict(backend=backend))).train()
            ddp = DistributedDataParallel(model)
            for _ in range(2):
                model.zero_grad()
                with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
                    outs = ddp(x)
                sum(o.float().square().mean() for o in outs).backward()
            if rank == 0:
                torch.save({n: p.grad for n, p in model.named_parameters()},
                           out_dir / f'grads_amp{int(amp)}.pt')
    finally:
        torch.distributed.destroy_process_group()


def _ddp_batch(world):
    return torch.randn(2 * world, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def test_compiled_backbone_under_ddp_and_autocast(tmp_path):
    """The compiled backbone in 2-process DDP (gloo) training steps, float32 and bf16
    autocast: DDP's reducer sees the gradients of the compiled backward, and they are the
    mean of the eager model's gradients on the two halves of the batch."""
    import torch.multiprocessing as mp
    world = 2
    mp.spawn(_ddp_compiled_steps, args=(world, tmp_path / 'init', tmp_path), nprocs=world)
    for amp in (False, True):
        grads = torch.load(tmp_path / f'grads_amp{int(amp)}.pt')
        torch.manual_seed(0)
        eager = GroupMamba(SMALL, drop_path_rate=0.).train()
        for half in _ddp_batch(world).split(2):
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
                outs = eager(half)
            (sum(o.float().square().mean() for o in outs) / world).backward()
        # bf16: the same operators, but AOTAutograd's decompositions round elsewhere
        rtol = 5e-2 if amp else 1e-4
        scale = max(p.grad.abs().max().item() for p in eager.parameters())
        for name, p in eager.named_parameters():
            assert torch.isfinite(grads[name]).all(), name
            torch.testing.assert_close(grads[name], p.grad, rtol=rtol, atol=rtol * scale,
                                       msg=f'{name} (bf16 autocast: {amp})')


def test_gradients_leave_the_graph_memory_when_the_backward_ends():
    """With CUDA graphs the parameters' gradients come out of the graphs' memory, which
    the next replay overwrites: the gradients a backward creates are moved into one new
    buffer (views of it as ``.grad``) when it ends, and gradients accumulate as in eager
    mode (this checks the mechanism on any device; the GPU test below, the graphs)."""
    from mmgroupmamba.runtime.compiled_forward import _move_gradients_out_after_backward
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    twin = copy.deepcopy(model)
    x1, x2 = torch.randn(5, 4), torch.randn(5, 4)

    def step(x):
        fresh = [p for p in model.parameters() if p.grad is None]
        grads_seen = {}
        # the gradients autograd hands over, before they are moved
        hooks = [p.register_hook(lambda g, p=p: grads_seen.update({p: g})) for p in fresh]
        out = _move_gradients_out_after_backward((model(x), ), fresh)
        out[0].square().sum().backward()
        for h in hooks:
            h.remove()
        return fresh, grads_seen

    fresh, seen = step(x1)
    assert len(fresh) == 4
    bases = {p.grad._base.data_ptr() for p in model.parameters()}
    assert len(bases) == 1                               # one new buffer for all four
    for p in model.parameters():
        assert p.grad.data_ptr() != seen[p].data_ptr()   # not the memory handed over
        assert p.grad.shape == p.shape

    fresh, _ = step(x2)                                  # accumulation: nothing to move
    assert fresh == []
    twin(x1).square().sum().backward()
    twin(x2).square().sum().backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


# ------------------------------------------------------------------------------- GPU
@requires_triton_gpu
def test_compiled_backbone_on_gpu_detection_sizes():
    """``compile=True`` as a config sets it (Inductor with the backbone's settings, CUDA
    graphs): three sizes, one graph, the eager outputs and gradients, also accumulated
    over two steps (float32 without TF32, so that the comparison sees the computation,
    not bf16 rounding in another order).

    The stem's BatchNorms stay in eval mode (``norm_eval``, as detection configs set it):
    in train mode the gradient reaching the first convolution has zero mean over the
    batch, and its weight gradient (scale ~1e-6 here) is what is left of a sum that
    cancels almost entirely, where any change of summation order (cuDNN's algorithm or
    Inductor's) moves it by ~1%. Even in eval mode the stem's first weights get a
    gradient that mostly cancels (small activations through near-linear GELUs into
    scale-invariant LayerNorms: ~3e-8 against ~0.2 elsewhere; the stem's output bias
    ~4e-6, a sum over every position of gradients that LayerNorm centres), so each
    gradient is compared at the tolerance of its own scale plus a floor of 1e-5 of the
    model's gradient scale: a reordered sum errs in proportion to its terms, not to what
    is left of them (on an H100: 2.4e-7 on that bias, 7e-9 on the first weight)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = GroupMamba(SMALL, drop_path_rate=0., norm_eval=True,
                       execution=dict(compile=True)).cuda().train()
    eager = GroupMamba(SMALL, drop_path_rate=0., norm_eval=True).cuda().train()
    eager.load_state_dict(model.state_dict())
    try:
        sizes = [(256, 320), (320, 256), (288, 352)]
        for size in sizes:
            # the last size accumulates the gradients of a second batch, of the first
            # size (a replayed graph), before they are compared
            for hw in [size] + sizes[:1] * (size == sizes[-1]):
                x = torch.randn(2, 3, *hw, device='cuda')
                outs, ref = model(x), eager(x)
                sum(o.square().mean() for o in outs).backward()
                sum(o.square().mean() for o in ref).backward()
                for a, r in zip(outs, ref):
                    torch.testing.assert_close(a, r, atol=1e-3, rtol=1e-3)
            model_scale = max(q.grad.abs().max().item() for q in eager.parameters())
            for (name, p), q in zip(model.named_parameters(), eager.parameters()):
                scale = q.grad.abs().max().item()
                err = (p.grad - q.grad).abs().max().item()
                torch.testing.assert_close(
                    p.grad, q.grad, atol=1e-3 * scale + 1e-5 * model_scale, rtol=1e-3,
                    msg=f'{name} {size}: max |difference| {err:.2e}, gradient scale '
                        f'{scale:.2e}, model gradient scale {model_scale:.2e}')
            model.zero_grad()
            eager.zero_grad()
        assert counters['stats']['unique_graphs'] == 1, dict(counters['stats'])
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
        torch._dynamo.reset()


@requires_triton_gpu
def test_released_fixture_through_the_compiled_backbone(reference):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model = released_small_classifier(reference, 'cuda')
    model[0].execution.compile = True   # the backbone, compiled by Inductor
    exp = reference['expected']
    with torch.no_grad():
        logits = model(exp['input'].cuda())
    torch.testing.assert_close(logits, exp['logits_eval'].cuda(), atol=1e-4, rtol=0)
    torch._dynamo.reset()
