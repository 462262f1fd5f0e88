"""Long mixed-precision training check: no NaN/Inf in the loss or the gradients.

    python tools/misc/gpu_amp_longrun.py                  # GroupMamba-T, 2000 steps, batch 64
    python tools/misc/gpu_amp_longrun.py --device cpu --steps 3 --batch-size 2 \\
        --img-size 32 --arch '{"stem_channels": 8, "embed_dims": [16, 16, 16, 16],
        "depths": [1, 1, 1, 1], "mlp_ratios": [2, 2, 2, 2]}'     # the test suite's CPU run

For each AMP dtype (``--dtypes bf16 fp16``), trains the classifier of the released models
(backbone, class-token head, both heads; ``Classifier`` of tools/analysis/benchmark.py)
from a fresh initialisation for ``--steps`` steps on the built-in shapes: a pool of
images rendered by ``mmgroupmamba.datasets`` at ``--img-size`` (``--pool`` of them, held
on the device), batches drawn from it with a random flip and shift per step. The step is
the released recipe's: AdamW (no decay on 1-D parameters and biases), linear warm-up,
drop path 0.05, gradient clipping at 5, the loss of both heads in fp32; fp16 with a
dynamic GradScaler (gradients unscaled before the norm is taken), bf16 without one. On
CUDA the backbone runs as replayed CUDA graphs (``cuda_graph='train'``;
``--no-cuda-graph`` for eager steps).

Every step's loss and total gradient norm (unscaled, before clipping) are kept on the
device and read once at the end, so the check does not slow the steps down. Printed per
dtype: non-finite losses, steps with non-finite gradients (for fp16 these are the
GradScaler's overflow steps, which it skips and answers by halving the scale), the
largest finite gradient norm and its step, the loss at the start and the end (means of
the first and last 20 steps), wall time. The run fails (exit status 1) on any
non-finite loss, any non-finite gradient in bf16, or fp16 overflow steps beyond
``--max-overflow-steps``.

Needs torch and numpy (and mmengine, which ``mmgroupmamba`` imports); mmpretrain and
mmcv are not needed.
"""
import argparse
import importlib.util
import json
import os.path as osp
import random
import sys
import time

import numpy as np
import torch

ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..', '..')
sys.path.insert(0, ROOT)


def _benchmark():
    """tools/analysis/benchmark.py: its Classifier, --arch parser and loss."""
    spec = importlib.util.spec_from_file_location(
        '_gm_benchmark', osp.join(ROOT, 'tools', 'analysis', 'benchmark.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def make_pool(num_images, size, device, seed=0):
    """``num_images`` generated shapes (uint8 NCHW) and their labels, on ``device``."""
    from mmgroupmamba.datasets import SHAPE_CLASSES
    from mmgroupmamba.datasets.synthetic_classification import render_shape
    rng = np.random.default_rng(seed)
    labels = np.arange(num_images) % len(SHAPE_CLASSES)
    images = np.stack([render_shape(SHAPE_CLASSES[c], size, rng) for c in labels])
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return images.to(device), torch.from_numpy(labels).to(device), len(SHAPE_CLASSES)


def draw_batch(images, labels, batch_size, generator):
    """A random batch with a random horizontal flip per image and one random shift."""
    idx = torch.randint(len(images), (batch_size, ), device=images.device,
                        generator=generator)
    x = images[idx].float().div_(127.5).sub_(1.0)
    flip = torch.rand(batch_size, device=images.device, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    # the shift comes from the host's generator: no device-to-host read per step
    size = x.shape[-1]
    shift = (random.randrange(-size // 8, size // 8 + 1),
             random.randrange(-size // 8, size // 8 + 1))
    return torch.roll(x, shifts=shift, dims=(2, 3)), labels[idx]


def param_groups(model, weight_decay):
    """As released: no weight decay on 1-D parameters (norms, D, skip_scale) and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith('.bias') else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay),
            dict(params=no_decay, weight_decay=0.0)]


def run(dtype_name, args, bench, pool, device):
    dtype = DTYPES[dtype_name]
    images, labels, num_classes = pool
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    model = bench.Classifier(bench._arch(args), num_classes=num_classes,
                             drop_path_rate=args.drop_path).to(device).train()
    graphed = device.type == 'cuda' and not args.no_cuda_graph
    if graphed:
        model.backbone.execution.cuda_graph = 'train'
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.999),
                                  **(dict(fused=True) if device.type == 'cuda' else {}))
    warmup = max(1, args.warmup)
    scaler = torch.amp.GradScaler(device.type, init_scale=args.init_scale,
                                  enabled=dtype == torch.float16)
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = args.clip_grad if args.clip_grad > 0 else float('inf')

    losses = torch.empty(args.steps, device=device)
    norms = torch.empty(args.steps, device=device)
    bench._sync(device)
    t0 = time.perf_counter()
    for step in range(args.steps):
        x, y = draw_batch(images, labels, args.batch_size, generator)
        for group in optimizer.param_groups:  # linear warm-up
            group['lr'] = args.lr * min(1.0, (step + 1) / warmup)
        with torch.autocast(device.type, dtype=dtype):
            loss = bench._loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # no-op without scaling (bf16)
        norms[step] = torch.nn.utils.clip_grad_norm_(params, max_norm)
        losses[step] = loss.detach()
        scaler.step(optimizer)  # skips the step on an fp16 overflow
        scaler.update()
        if args.log_interval and (step + 1) % args.log_interval == 0:
            bench._sync(device)
            print(f'  [{dtype_name}] step {step + 1}/{args.steps}  loss {loss.item():.4f}  '
                  f'{(step + 1) / (time.perf_counter() - t0):.1f} steps/s', flush=True)
    bench._sync(device)
    elapsed = time.perf_counter() - t0

    losses, norms = losses.cpu(), norms.cpu()
    finite_norm = torch.isfinite(norms)
    nonfinite_loss = int((~torch.isfinite(losses)).sum())
    nonfinite_grad = int((~finite_norm).sum())
    largest = norms.masked_fill(~finite_norm, float('-inf'))
    k = min(20, args.steps)
    result = dict(
        dtype=dtype_name, steps=args.steps, batch_size=args.batch_size,
        img_size=args.img_size, cuda_graph=graphed,
        nonfinite_loss_steps=nonfinite_loss, nonfinite_grad_steps=nonfinite_grad,
        first_nonfinite_grad_steps=[int(i) for i in torch.nonzero(~finite_norm)[:10, 0]],
        max_grad_norm=float(largest.max()) if finite_norm.any() else None,
        max_grad_norm_step=int(largest.argmax()) if finite_norm.any() else None,
        loss_start=float(losses[:k].mean()), loss_end=float(losses[-k:].mean()),
        final_loss_scale=scaler.get_scale() if scaler.is_enabled() else None,
        seconds=elapsed)
    problems = []
    if nonfinite_loss:
        problems.append(f'{nonfinite_loss} steps with a non-finite loss')
    if dtype == torch.bfloat16 and nonfinite_grad:
        problems.append(f'{nonfinite_grad} steps with non-finite gradients')
    if dtype == torch.float16 and nonfinite_grad > args.max_overflow_steps:
        problems.append(f'{nonfinite_grad} fp16 overflow steps (more than '
                        f'--max-overflow-steps {args.max_overflow_steps})')
    result['problems'] = problems
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='tiny',
                        help='tiny / small / base preset, or an arch dict as JSON')
    parser.add_argument('--steps', type=int, default=2000)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--dtypes', nargs='+', default=['bf16', 'fp16'], choices=list(DTYPES))
    parser.add_argument('--pool', type=int, default=512,
                        help='generated images held on the device (batches drawn from them)')
    parser.add_argument('--lr', type=float, default=1e-3 * 64 / 1024,
                        help='AdamW lr (default: the released 1e-3 per 1024 images, at 64)')
    parser.add_argument('--weight-decay', type=float, default=0.05)
    parser.add_argument('--warmup', type=int, default=100, help='linear warm-up steps')
    parser.add_argument('--drop-path', type=float, default=0.05)
    parser.add_argument('--clip-grad', type=float, default=5.0,
                        help='max gradient norm (0: no clipping; the norm is recorded)')
    parser.add_argument('--max-overflow-steps', type=int, default=None,
                        help='fp16 steps the GradScaler may skip for overflow before the '
                        'run fails (default: 1%% of --steps, at least 1)')
    parser.add_argument('--init-scale', type=float, default=2.0**16,
                        help='initial fp16 loss scale (torch\'s default 2**16)')
    parser.add_argument('--no-cuda-graph', action='store_true',
                        help='eager backbone steps on CUDA (default: cuda_graph=\'train\')')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--log-interval', type=int, default=250,
                        help='print progress every N steps (0: never; each print syncs)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args(argv)
    if args.max_overflow_steps is None:
        args.max_overflow_steps = max(1, args.steps // 100)

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    bench = _benchmark()
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu')
    print(f'device: {name}  torch {torch.__version__}  arch {args.arch}  steps {args.steps}  '
          f'batch {args.batch_size}  {args.img_size}x{args.img_size}  lr {args.lr:g}  '
          f'clip {args.clip_grad}', flush=True)
    t0 = time.perf_counter()
    pool = make_pool(args.pool, args.img_size, device, seed=args.seed)
    print(f'data: {args.pool} generated shapes images ({pool[2]} classes) in '
          f'{time.perf_counter() - t0:.1f} s', flush=True)

    results = [run(d, args, bench, pool, device) for d in args.dtypes]
    print(f'\n{"dtype":<6} {"steps":>6} {"loss start":>10} {"loss end":>9} '
          f'{"nonfinite loss":>14} {"nonfinite grad":>14} {"max grad norm (step)":>21} '
          f'{"time s":>7}')
    for r in results:
        norm = ('-' if r['max_grad_norm'] is None
                else f'{r["max_grad_norm"]:.3f} ({r["max_grad_norm_step"]})')
        print(f'{r["dtype"]:<6} {r["steps"]:>6} {r["loss_start"]:>10.4f} '
              f'{r["loss_end"]:>9.4f} {r["nonfinite_loss_steps"]:>14} '
              f'{r["nonfinite_grad_steps"]:>14} {norm:>21} {r["seconds"]:>7.1f}')
        if r['dtype'] == 'fp16':
            print(f'       fp16 loss scale at the end {r["final_loss_scale"]:g}; overflow '
                  f'steps (skipped by the GradScaler): {r["first_nonfinite_grad_steps"]}'
                  + (' ...' if r['nonfinite_grad_steps'] > 10 else ''))
    failed = [f'{r["dtype"]}: {p}' for r in results for p in r['problems']]
    print('FAIL: ' + '; '.join(failed) if failed else 'PASS: no NaN/Inf in the loss or '
          'the applied gradients')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), results=results), f, indent=1)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
