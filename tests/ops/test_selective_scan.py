import pytest
import torch

from mmgroupmamba.ops import (available_backends, resolve_backend, selective_scan,
                              selective_scan_chunked, selective_scan_ref)

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def _inputs(batch, dim, length, d_state, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(batch * 1000 + dim * 10 + length)
    mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    tensors = dict(u=mk(batch, dim, length), delta=mk(batch, dim, length) * 0.5,
                   A=-torch.rand(dim, d_state, generator=g) * 3 - 0.1,
                   B=mk(batch, d_state, length), C=mk(batch, d_state, length),
                   D=mk(dim), delta_bias=mk(dim) * 0.5)
    return {k: v.to(device=device, dtype=dtype if k in ('u', 'delta', 'B', 'C') else
                    torch.float32).requires_grad_() for k, v in tensors.items()}


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('shape', [(2, 4, 1, 1), (2, 6, 37, 1), (1, 5, 64, 1),
                                   (2, 3, 50, 4)])
def test_backends_match_reference(device, shape):
    backends = [b for b in available_backends(device) if b != 'reference']
    assert 'pytorch' in backends
    ref_in = _inputs(*shape, device)
    y_ref = selective_scan_ref(**ref_in)
    grad_out = torch.randn_like(y_ref)
    y_ref.backward(grad_out)
    for backend in backends:
        if backend == 'triton' and shape[3] != 1:
            continue  # our Triton kernel is specialised for state size 1
        inp = _inputs(*shape, device)
        y = selective_scan(**inp, backend=backend)
        torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4, msg=backend)
        y.backward(grad_out)
        for name in inp:
            torch.testing.assert_close(inp[name].grad, ref_in[name].grad, atol=2e-4,
                                       rtol=1e-4, msg=f'{backend} grad {name}')


def test_chunked_any_chunk_length_matches():
    inp = {k: v.detach() for k, v in _inputs(2, 3, 29, 2, 'cpu').items()}
    y_ref = selective_scan_ref(**inp)
    for chunk_len in (1, 2, 5, 29, 40):
        torch.testing.assert_close(selective_scan_chunked(**inp, chunk_len=chunk_len),
                                   y_ref, atol=1e-5, rtol=1e-5)


def test_chunked_is_stable_for_strong_decay():
    # Large delta * |A| would overflow a naive exp(-cumsum) formulation.
    inp = {k: v.detach() for k, v in _inputs(1, 2, 400, 1, 'cpu').items()}
    inp['delta'] = inp['delta'].abs() * 50
    y = selective_scan_chunked(**inp)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, selective_scan_ref(**inp), atol=1e-4, rtol=1e-4)


def test_half_inputs_scan_in_fp32_and_keep_dtype():
    inp = {k: v.detach() for k, v in _inputs(2, 4, 33, 1, 'cpu').items()}
    half = {k: v.to(torch.bfloat16) if k in ('u', 'delta', 'B', 'C') else v
            for k, v in inp.items()}
    y = selective_scan(**half, backend='pytorch')
    assert y.dtype == torch.bfloat16
    y_ref = selective_scan_ref(**{k: v.float() for k, v in half.items()})
    torch.testing.assert_close(y.float(), y_ref, atol=3e-2, rtol=3e-2)


def test_backend_selection_errors():
    assert resolve_backend('auto', 'cpu') == 'pytorch'
    with pytest.raises(ValueError, match='Unknown selective-scan backend'):
        resolve_backend('cuda_magic', 'cpu')
    with pytest.raises(RuntimeError, match='cannot run on cpu'):
        resolve_backend('triton', 'cpu')
    if 'mamba_ssm' not in available_backends('cuda'):
        with pytest.raises(RuntimeError, match='mamba-ssm is not importable'):
            resolve_backend('mamba_ssm', 'cuda')


def test_backend_resolution_for_state_sizes():
    cuda = available_backends('cuda')
    # the Triton kernels are specialised for state size 1: auto skips them otherwise
    assert resolve_backend('auto', 'cuda', d_state=4) == [b for b in cuda if b != 'triton'][0]
    if 'triton' in cuda:
        with pytest.raises(ValueError, match='d_state 1'):
            resolve_backend('triton', 'cuda', d_state=4)


def test_backend_resolution_traces_into_one_graph():
    """Compiled, resolving ``auto`` is a constant, not the import attempts (a failed
    import of mamba-ssm would break the graph)."""
    expected = len(resolve_backend('auto', 'cuda'))
    fn = torch.compile(lambda x: x + len(resolve_backend('auto', torch.device('cuda'))),
                       fullgraph=True, backend='eager')
    assert fn(torch.zeros(1)).item() == expected
