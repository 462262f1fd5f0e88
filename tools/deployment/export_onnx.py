"""Export a GroupMamba classifier (or its backbone) to ONNX and check it with onnxruntime.

    python tools/deployment/export_onnx.py CONFIG [CKPT] --out model.onnx [--shape H W]
        [--dynamic-shape] [--backbone] [--opset 17] [--atol 1e-4]

The graph is traced through the PyTorch execution of the model: every GroupMamba layer
runs its per-group (released) path with the chunked PyTorch selective scan, and the
layers' Triton kernels are switched off (``fused_kernels=False``), so the file holds
standard ONNX operators only and runs anywhere onnxruntime does. The exporter is torch's
TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): it records the scan's
Python loops unrolled, which the dynamo exporter cannot do for loops whose length comes
from the input size without specialising them anyway, and it needs no onnxscript.

Input: the normalised image batch (B, 3, H, W), float32, i.e. after the config's data
preprocessor (mean/std, BGR->RGB); output: the classifier's eval logits (mean of the
class and distillation heads; ``logits``), or with ``--backbone`` one NCHW map per
``out_indices`` of the config (``stage{i}``). The scan is unrolled for the exported
H x W, so the spatial size is fixed; ``--dynamic-shape`` makes the batch size dynamic.

After export the model is loaded with onnxruntime (CPU) and run on a random input (batch 1,
and batch 2 with ``--dynamic-shape``); the largest absolute difference to the PyTorch
model is printed, and the tool fails if it exceeds ``--atol``. CKPT: a checkpoint of ours
(``tools/train.py``, or a converted release, ``tools/model_converters/official2mm.py``);
without it the model keeps its random initialisation (to check the export itself).
Needs ``onnx`` and ``onnxruntime`` (``requirements/optional.txt``).
"""
import argparse
import os
import os.path as osp
import sys

import torch
import torch.nn as nn

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

from mmgroupmamba.apis import backbone_from_config  # noqa: E402
from mmgroupmamba.execution import eager_backbone_config, execution_override  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mmpretrain config (any config with --backbone)')
    parser.add_argument('checkpoint', nargs='?',
                        help='weights (default: the random initialisation)')
    parser.add_argument('--out', default='model.onnx', help='output ONNX file')
    parser.add_argument('--shape', nargs=2, type=int, default=[224, 224],
                        metavar=('H', 'W'), help='input height and width')
    parser.add_argument('--dynamic-shape', action='store_true',
                        help='dynamic batch size (the spatial size stays fixed)')
    parser.add_argument('--backbone', action='store_true',
                        help='export the backbone alone (its multi-scale outputs)')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset version')
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='largest accepted |onnxruntime - PyTorch| difference')
    parser.add_argument('--no-check', action='store_true',
                        help='export only, without running onnxruntime')
    args = parser.parse_args(argv)
    if min(args.shape) < 1:
        parser.error(f'--shape needs positive sizes, got {args.shape}.')
    return args


class ClassifierLogits(nn.Module):
    """An mmpretrain classifier as images -> eval logits (``mode='tensor'``)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images):
        return self.classifier(images, mode='tensor')


def build_classifier(cfg, checkpoint=None) -> nn.Module:
    """The config's classifier in eval mode; the checkpoint must fit it exactly."""
    from mmengine.registry import DefaultScope
    from mmengine.runner import load_checkpoint
    from mmpretrain.registry import MODELS
    if cfg.get('default_scope', 'mmpretrain') != 'mmpretrain':
        raise ValueError(f'{cfg.filename} is a {cfg.default_scope} config: only '
                         'classifiers export whole; pass --backbone for its backbone.')
    model_cfg = cfg.model.copy()
    model_cfg.backbone = eager_backbone_config(model_cfg.backbone)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(model_cfg)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    else:
        model.backbone.init_weights()
        model.head.init_weights()
    return ClassifierLogits(model).eval()


def export(model, example, path, opset=17, dynamic_batch=False, output_names=None):
    """Trace ``model`` on ``example`` through its PyTorch execution and write ``path``."""
    # The per-group path with the chunked PyTorch scan and PyTorch ops: under tracing the
    # layers take the per-group path anyway (mixer='auto'); the backend and the kernels
    # are set so that no CUDA kernel can be chosen for a model on the GPU.
    names = output_names or ['output']
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: 'batch'} for name in ['input', *names]}
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with torch.no_grad(), execution_override(model, scan_backend='pytorch',
                                             fused_kernels=False):
        torch.onnx.export(model, (example, ), path, dynamo=False, opset_version=opset,
                          input_names=['input'], output_names=names,
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    return path


def max_difference(path, model, inputs):
    """Largest |onnxruntime - PyTorch| over all outputs, for each input."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    onnx.checker.check_model(path)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    diffs = []
    for x in inputs:
        with torch.no_grad():
            expected = model(x)
        expected = expected if isinstance(expected, (tuple, list)) else (expected, )
        got = session.run(None, {'input': x.numpy()})
        if len(got) != len(expected):
            raise RuntimeError(f'{path}: {len(got)} outputs, PyTorch has {len(expected)}.')
        diffs.append(max(float(np.abs(g - e.numpy()).max())
                         for g, e in zip(got, expected)))
    return diffs


def main(argv=None):
    from mmengine.config import Config
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.backbone:
        model = backbone_from_config(cfg, args.checkpoint)
        names = [f'stage{i}' for i in model.out_indices]
    else:
        model = build_classifier(cfg, args.checkpoint)
        names = ['logits']
    H, W = args.shape
    torch.manual_seed(0)
    example = torch.randn(1, 3, H, W)
    export(model, example, args.out, args.opset, args.dynamic_shape, names)
    what = 'backbone' if args.backbone else 'classifier'
    weights = args.checkpoint or 'random initialisation'
    print(f'exported the {what} of {args.config} ({weights}) at {H}x{W} to {args.out}')
    if args.no_check:
        return None
    inputs = [example] + ([torch.randn(2, 3, H, W)] if args.dynamic_shape else [])
    diffs = max_difference(args.out, model, inputs)
    for x, d in zip(inputs, diffs):
        print(f'max |onnxruntime - pytorch| = {d:.3e} (fp32, input '
              f'{"x".join(map(str, x.shape))})')
    if max(diffs) > args.atol:
        raise SystemExit(f'ONNX model differs from PyTorch by {max(diffs):.3e} > '
                         f'--atol {args.atol:g}.')
    return diffs


if __name__ == '__main__':
    main()
