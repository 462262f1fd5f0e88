"""tools/deployment/export_onnx.py: the classifier and the backbone alone exported through
the PyTorch scan path, run by onnxruntime, compared with PyTorch (fp32, <= 1e-4)."""
import os.path as osp

import pytest
import torch

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

from conftest import REPO_ROOT  # noqa: E402
from tools_import import _load  # noqa: E402

export_onnx = _load('export_onnx', 'deployment', 'export_onnx.py')
DEMO = osp.join(REPO_ROOT, 'configs', 'demo', 'groupmamba-demo_shapes.py')
DET_DEMO = osp.join(REPO_ROOT, 'configs', 'demo', 'maskrcnn_groupmamba_demo.py')
TINY = osp.join(REPO_ROOT, 'configs', 'groupmamba', 'groupmamba-t_8xb128_in1k.py')


def perturbed_checkpoint(config, path, scale=0.5):
    """A checkpoint of ``config``'s classifier whose weights are its initialisation plus
    noise: logits of order 0.1-1 (a fresh head's are ~0.02), so the comparison means
    something, and no parameter keeps a default value (ones, zeros) that could hide a
    wrong mapping."""
    from mmengine.config import Config
    model = export_onnx.build_classifier(Config.fromfile(config)).classifier
    torch.manual_seed(0)
    state = {k: v + scale * torch.randn_like(v) * (v.std() if v.numel() > 1 else 1)
             if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({'state_dict': state}, path)
    return path


def standard_operators_only(path):
    model = onnx.load(path)
    ops = {(n.domain or 'ai.onnx', n.op_type) for n in model.graph.node}
    assert all(domain == 'ai.onnx' for domain, _ in ops), ops
    assert not {op for _, op in ops} & {'ATen', 'PythonOp'}, ops
    return {op for _, op in ops}


def test_demo_classifier_matches_pytorch(tmp_path):
    ckpt = perturbed_checkpoint(DEMO, str(tmp_path / 'demo.pth'))
    out = str(tmp_path / 'demo.onnx')
    diffs = export_onnx.main([DEMO, ckpt, '--out', out, '--shape', '64', '64',
                              '--dynamic-shape'])
    assert len(diffs) == 2  # batch 1 and, through the dynamic axis, batch 2
    assert max(diffs) <= 1e-4
    ops = standard_operators_only(out)
    assert 'LayerNormalization' in ops and 'Conv' in ops

    # logits of order 0.1-1: the 1e-4 bound is a tight one relative to them
    import onnxruntime as ort
    x = torch.randn(3, 3, 64, 64)
    logits = ort.InferenceSession(out, providers=['CPUExecutionProvider']).run(
        None, {'input': x.numpy()})[0]
    assert logits.shape == (3, 8) and logits.std() > 0.1


def test_backbone_of_a_detection_config_non_square(tmp_path):
    out = str(tmp_path / 'backbone.onnx')
    diffs = export_onnx.main([DET_DEMO, '--backbone', '--out', out, '--shape', '64', '96'])
    assert max(diffs) <= 1e-4
    model = onnx.load(out)
    outputs = [(o.name, [d.dim_value for d in o.type.tensor_type.shape.dim])
               for o in model.graph.output]
    assert outputs == [('stage0', [1, 32, 16, 24]), ('stage1', [1, 64, 8, 12]),
                       ('stage2', [1, 96, 4, 6]), ('stage3', [1, 128, 2, 3])]


def test_groupmamba_tiny_random_weights(tmp_path):
    """The released architecture (random weights); 64x64 keeps the export short (its
    time grows with the unrolled scan steps): the README gives the 224x224 figure."""
    ckpt = perturbed_checkpoint(TINY, str(tmp_path / 'tiny.pth'), scale=0.1)
    diffs = export_onnx.main([TINY, ckpt, '--out', str(tmp_path / 'tiny.onnx'),
                              '--shape', '64', '64'])
    assert max(diffs) <= 1e-4


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match='--backbone'):
        export_onnx.main([DET_DEMO, '--out', str(tmp_path / 'x.onnx')])
    wrong = perturbed_checkpoint(DEMO, str(tmp_path / 'demo.pth'))
    with pytest.raises(RuntimeError, match='size mismatch'):
        export_onnx.main([TINY, wrong, '--out', str(tmp_path / 'x.onnx')])
