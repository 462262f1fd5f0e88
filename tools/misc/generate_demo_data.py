"""Generate the built-in demo data sets (no downloads).

    python tools/misc/generate_demo_data.py cls [--out data/shapes]       # ImageNet layout
    python tools/misc/generate_demo_data.py det [--out data/shapes_coco]  # COCO format
    python tools/misc/generate_demo_data.py seg [--out data/shapes_ade]   # ADE20K layout
"""
import argparse
import importlib
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

# kind: (module under mmgroupmamba.datasets, generator function, default root)
GENERATORS = {
    'cls': ('synthetic_classification', 'generate_classification_set', 'data/shapes'),
    'det': ('synthetic_coco', 'generate_detection_set', 'data/shapes_coco'),
    'seg': ('synthetic_ade', 'generate_segmentation_set', 'data/shapes_ade'),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('kind', choices=sorted(GENERATORS))
    parser.add_argument('--out', help='output root (default: per kind, under data/)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    module, func, default_root = GENERATORS[args.kind]
    generate = getattr(importlib.import_module(f'mmgroupmamba.datasets.{module}'), func)
    root = generate(args.out or default_root, seed=args.seed, overwrite=args.overwrite)
    print(f'{args.kind} demo data ready in {root}')


if __name__ == '__main__':
    main()
