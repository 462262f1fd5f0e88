"""tools/analysis/count_launches.py: the launches of an eager step, counted on CPU with
the Triton kernels in the interpreter."""
import torch

from conftest import requires_triton_interpreter, run_in_triton_interpreter
from tools_import import load_tool


def test_counter_leaves_out_what_launches_nothing():
    cl = load_tool('analysis', 'count_launches.py')
    x = torch.randn(4, 6)
    with cl.LaunchCounter() as counter:
        y = x.view(6, 4).t().contiguous()     # a view, a view, then a copy
        x.contiguous()                         # already contiguous: no copy
        x.to(torch.float32)                    # same dtype: no copy
        x.to(torch.float64)                    # a cast
        torch.empty(3)                         # an allocation
        (y + 1).sum()
    assert counter.aten == {'clone': 1, '_to_copy': 1, 'add': 1, 'sum': 1}
    assert counter.total == 4 and not counter.triton
    # without autograd some of them reach the counter whole: counted where they copy
    with torch.inference_mode(), cl.LaunchCounter() as counter:
        x.t().contiguous()
        x.contiguous()
        x.to(torch.float32)
        x.to(torch.float64)
    assert sum(counter.aten.values()) == 2, counter.aten


_INTERPRET_SCRIPT = '''
    import torch
    from tools_import import load_tool
    from mmgroupmamba.models import GroupMamba

    cl = load_tool('analysis', 'count_launches.py')
    model = GroupMamba('demo', out_indices=(0, 1, 2, 3), drop_path_rate=0.,
                       execution=dict(scan_backend='triton'))
    x = torch.randn(1, 3, 64, 64)
    train = cl.count_step(model, x, 'train')
    infer = cl.count_step(model, x, 'infer')
    blocks = sum(model.arch_settings['depths'])
    # every GroupMamba layer runs one scan kernel forward (and one backward in training)
    assert train.triton['_scan_fwd_kernel'] == train.triton['_scan_bwd_kernel'] == blocks
    assert infer.triton['_scan_fwd_kernel'] == blocks and '_scan_bwd_kernel' not in infer.triton
    # training casts the weights to bf16 on every step; inference keeps the casts cached
    assert train.aten['_to_copy'] > 0 and '_to_copy' not in infer.aten
    assert 'view' not in train.aten and 'empty' not in train.aten
    assert infer.total < train.total
    print('interpreter ok')
'''


@requires_triton_interpreter
def test_counts_a_step_in_the_interpreter():
    run_in_triton_interpreter(_INTERPRET_SCRIPT)
