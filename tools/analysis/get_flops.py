"""FLOPs (fvcore convention, selective scan included) and parameters of GroupMamba.

    python tools/analysis/get_flops.py                       # T/S/B classifiers at 224
    python tools/analysis/get_flops.py --arch tiny --shape 512 512
    python tools/analysis/get_flops.py --config configs/...py --shape 800 1333

Presets are counted as the released classifiers (backbone, class block and both heads,
1000 classes). With ``--config`` the config's backbone is counted (any codebase).
"""
import argparse
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

from mmgroupmamba.analysis import count_flops, count_params  # noqa: E402

RELEASED = {'tiny': (23.36, 4.69), 'small': (34.78, 7.26), 'base': (57.15, 14.15)}


def build_classifier(arch, num_classes=1000):
    import torch.nn as nn

    from mmgroupmamba.models import GroupMamba, GroupMambaClsHead

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = GroupMamba(arch, out_indices=(3, ), final_norm=False)
            dims = self.backbone.embed_dims
            ratio = self.backbone.arch_settings['mlp_ratios'][-1]
            self.head = GroupMambaClsHead(num_classes, dims[-1], mlp_ratio=ratio)

        def forward(self, x):
            return self.head(self.backbone(x))

    return Classifier()


def build_from_config(path):
    from mmengine.config import Config
    from mmengine.registry import MODELS, DefaultScope
    import mmgroupmamba  # noqa: F401
    cfg = Config.fromfile(path)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmengine')):
        # Build the registered scope's model so its extra packages are imported.
        model = MODELS.build(cfg.model)
    return model.backbone if hasattr(model, 'backbone') else model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', nargs='+', default=['tiny', 'small', 'base'])
    parser.add_argument('--config', help='count the backbone of this config instead')
    parser.add_argument('--shape', nargs=2, type=int, default=[224, 224],
                        metavar=('H', 'W'))
    args = parser.parse_args(argv)
    x = torch.randn(1, 3, *args.shape)

    models = []
    if args.config:
        models.append((osp.basename(args.config) + ' (backbone)',
                       build_from_config(args.config), None))
    else:
        models += [(f'GroupMamba-{arch[0].upper()}', build_classifier(arch),
                    RELEASED.get(arch)) for arch in args.arch]
    print(f'input 1x3x{args.shape[0]}x{args.shape[1]}; FLOPs = fvcore count (one '
          'multiply-add = 1) + 9BLDN + BDL per selective scan')
    print(f'{"model":<36} {"params (M)":>10} {"FLOPs (G)":>10} {"of which scan":>14}'
          '  released (params / FLOPs)')
    for name, model, ref in models:
        flops, analyzer = count_flops(model, x, return_analyzer=True)
        scan = analyzer.by_operator().get('PythonOp._OpaqueSelectiveScan', 0)
        ref_txt = f'{ref[0]:.2f}M / {ref[1]:.2f}G' if ref else ''
        print(f'{name:<36} {count_params(model) / 1e6:>10.2f} {flops / 1e9:>10.3f} '
              f'{scan / 1e9:>13.3f}G  {ref_txt}')


if __name__ == '__main__':
    main()
