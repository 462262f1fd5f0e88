"""Throughput (images/s) and peak memory of GroupMamba, per execution and scan backend.

    python tools/analysis/benchmark.py --arch tiny --batch-size 128 --img-size 224 \\
        --precision fp32 amp --mode infer train \\
        --backends pytorch triton mamba_ssm reference-layer

Our rows (the classifier: backbone, class block and both heads):

* ``triton``, ``pytorch``, ``mamba_ssm``: the grouped layer execution (all four groups as
  a few batched kernels) with that scan backend (``triton``: one fused kernel per layer);
* ``reference-layer``: the per-group execution, one VSSS after the other as in the
  released code, with mamba-ssm's CUDA scan where installed, else the PyTorch scan, and
  PyTorch's own LayerNorm and depthwise conv (our fused kernels off, norms in fp32 under
  autocast). It stands in for the released implementation; ``reference-layer:<backend>``
  picks its scan backend.

When timm imports, ConvNeXt-T and Swin-T run in the same process with the same batch,
resolution, precision and timing, and every row gets its ratio to them. Inference runs
in ``torch.inference_mode``; a training step is forward, loss (cross entropy on both
heads), backward and an AdamW step. Timing: warm-up iterations, then CUDA-synchronised
wall-clock over ``--iters`` iterations; peak memory is ``torch.cuda.max_memory_allocated``
over the timed iterations. ``--profile`` prints the top CUDA kernels of each of our rows.
``--cuda-graph`` times every row (baselines too) as the replay of a CUDA graph of its
step: eager steps at these sizes are bound by Python and kernel-launch overhead, which
moves with the host CPU; the graph measures what the GPU work costs. ``--graph-backbone``
adds rows with the backbone's own ``cuda_graph=True`` (its forward and backward graphed,
head, loss and optimizer eager), the setting users have; baselines stay eager unless
``--cuda-graph``.

Detection and segmentation shapes: ``--img-size H W`` (non-square), ``--backbone-only``
(the backbone's four NCHW stage outputs as mmdet / mmseg call it, loss = sum of their
means, against timm's ConvNeXt-T / Swin-T with ``features_only=True``, Swin-T built for
the input size), and ``--dense``: the three shapes of our users' jobs (Mask R-CNN 1x:
2 x 800x1344; UperNet: 2 x 512x512 and 16 x 512x512), training step and inference, bf16
autocast, backbone only, GroupMamba eager and with ``cuda_graph=True``, the baselines
eager, in one process; the table is in ms per step with ratios to Swin-T / ConvNeXt-T.
With ``--profile`` each dense row's top kernels (ours and the baselines') are printed,
and the table adds the share of the selective scan in our GPU time and the GPU time per
step of ours and of Swin-T (the comparison that does not move with the host).

    python tools/analysis/benchmark.py --dense --profile
"""
import argparse
import contextlib
import gc
import json
import os.path as osp
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

# The numbers for the released implementation (one H200, batch 128, 224x224).
RELEASED_H200 = {('infer', 'fp32'): 1428, ('infer', 'amp'): 1585, ('train', 'amp'): 338}
TIMM_BASELINES = {'ConvNeXt-T': 'convnext_tiny', 'Swin-T': 'swin_tiny_patch4_window7_224'}
# (batch, H, W) of --dense: Mask R-CNN 1x (1333x800 padded to 32, 2 per GPU), UperNet
# (512x512 crops, 2 per GPU; and 16, one node's batch on one GPU).
DENSE_SHAPES = [(2, 800, 1344), (2, 512, 512), (16, 512, 512)]


# ----------------------------------------------------------------------------- models
class Classifier(nn.Module):
    """Backbone + class-token head, as the released classifiers."""

    def __init__(self, arch, num_classes=1000, drop_path_rate=0.05, with_cp=False,
                 ffn_cp=False):
        super().__init__()
        from mmgroupmamba.models import GroupMamba
        self.backbone = GroupMamba(arch, out_indices=(3, ), final_norm=False,
                                   drop_path_rate=drop_path_rate, with_cp=with_cp,
                                   execution=dict(ffn_cp=ffn_cp))
        dim = self.backbone.embed_dims[-1]
        ratio = self.backbone.arch_settings['mlp_ratios'][-1]
        try:
            from mmgroupmamba.models import GroupMambaClsHead
            self.head = GroupMambaClsHead(num_classes, dim, mlp_ratio=ratio)
        except ImportError:  # no mmpretrain: the same computation without its base class
            from mmgroupmamba.models.layers import ClassBlock
            self.head = _PlainHead(ClassBlock(dim, ratio), dim, num_classes)
        with _quiet_mmengine():
            self.backbone.init_weights()
            self.head.init_weights()

    def forward(self, x):
        return self.head(self.backbone(x))


@contextlib.contextmanager
def _quiet_mmengine():
    """Silence mmengine's per-parameter init report."""
    import logging
    try:
        from mmengine.logging import MMLogger
        logger = MMLogger.get_current_instance()
    except Exception:
        yield
        return
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class _PlainHead(nn.Module):

    def __init__(self, class_block, dim, num_classes):
        super().__init__()
        self.class_block = class_block
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        self.dist_fc = nn.Linear(dim, num_classes)

    def init_weights(self):
        pass

    def forward(self, feats):
        x = self.norm(self.class_block(feats[-1].mean(dim=(2, 3))))
        cls_score, dist_score = self.fc(x), self.dist_fc(x)
        return (cls_score, dist_score) if self.training else (cls_score + dist_score) / 2


class Backbone(nn.Module):
    """The backbone as mmdet / mmseg call it (the Mask R-CNN config's settings): the four
    NCHW stage outputs."""

    def __init__(self, arch, with_cp=False, ffn_cp=False):
        super().__init__()
        from mmgroupmamba.models import GroupMamba
        self.backbone = GroupMamba(arch, out_indices=(0, 1, 2, 3), final_norm=True,
                                   drop_path_rate=0.2, norm_eval=True, with_cp=with_cp,
                                   execution=dict(ffn_cp=ffn_cp))
        with _quiet_mmengine():
            self.backbone.init_weights()

    def forward(self, x):
        return self.backbone(x)


class _ConfigModel(nn.Module):
    """A model built from a config, called in ``mode='tensor'``."""

    def __init__(self, path):
        super().__init__()
        from mmengine.config import Config
        from mmengine.registry import MODELS, DefaultScope
        import mmgroupmamba  # noqa: F401
        cfg = Config.fromfile(path)
        with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmengine')):
            self.model = MODELS.build(cfg.model)
        with _quiet_mmengine():
            self.model.init_weights()

    def forward(self, x):
        return self.model(x, mode='tensor')


def _compile_options(text):
    """``--compile-options``: a JSON object of ``torch.compile`` arguments."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f'not JSON ({e}): {text!r}')
    if not isinstance(options, dict):
        raise argparse.ArgumentTypeError(f'a JSON object of torch.compile arguments, '
                                         f'got {text!r}')
    return options


def _arch(args):
    """``--arch``: a preset name, or an arch dict given as JSON."""
    return json.loads(args.arch) if args.arch.lstrip().startswith('{') else args.arch


def build_ours(args):
    if args.config:
        return _ConfigModel(args.config)
    if args.backbone_only:
        return Backbone(_arch(args), with_cp=args.with_cp, ffn_cp=args.ffn_cp)
    return Classifier(_arch(args), with_cp=args.with_cp, ffn_cp=args.ffn_cp)


def parse_backend(spec: str):
    """``triton`` -> ('grouped', 'triton'); ``reference-layer[:b]`` -> ('reference', b)."""
    from mmgroupmamba.ops import available_backends
    if spec.startswith('reference-layer'):
        _, _, backend = spec.partition(':')
        if not backend:
            backend = ('mamba_ssm' if 'mamba_ssm' in available_backends('cuda')
                       and torch.cuda.is_available() else 'pytorch')
        return 'reference', backend
    return 'grouped', spec


def backend_usable(backend: str, device: torch.device):
    from mmgroupmamba.ops import available_backends
    if backend in available_backends(device) or backend == 'auto':
        return None
    if backend == 'mamba_ssm':
        return 'mamba-ssm not importable'
    if backend == 'triton':
        return 'needs CUDA and Triton'
    return f'backend {backend!r} unknown or unusable here'


def configure(model, spec, args):
    """Every execution policy of ``model`` (backbone and head) set for ``spec``: the
    reference rows run as released (per-group mixers, PyTorch ops, every LayerNorm in
    float32 under autocast)."""
    from mmgroupmamba.execution import configure_execution
    impl, backend = parse_backend(spec)
    configure_execution(model, mixer=impl, scan_backend=backend,
                        linear_mode=args.linear_mode, mixer_cp=args.mixer_cp,
                        fused_kernels=uses_fused_kernels(spec, args),
                        norm_amp_output=impl != 'reference')
    return impl, backend


def uses_fused_kernels(spec, args):
    """Our LayerNorm, depthwise-conv and 3xTF32 linear kernels: off for the stand-in of
    the released code and with ``--unfused``."""
    return not args.unfused and parse_backend(spec)[0] != 'reference'


# ----------------------------------------------------------------------------- timing
def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _autocast(device, precision, amp_dtype):
    if precision == 'amp':
        return torch.autocast(device.type, dtype=amp_dtype)
    return contextlib.nullcontext()


def _loss(out, target):
    if isinstance(out, (tuple, list)) and out[0].dim() == 4:  # a backbone's feature maps
        return sum(o.float().mean() for o in out)
    if isinstance(out, (tuple, list)):  # class and distillation heads
        return sum(F.cross_entropy(o.float(), target) for o in out) / len(out)
    return F.cross_entropy(out.float(), target)


def make_step(model, mode, precision, args, device):
    x = torch.randn(args.batch_size, 3, *args.img_size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    amp_dtype = torch.float16 if args.amp_dtype == 'fp16' else torch.bfloat16
    if mode == 'infer':
        model.eval()

        def step():
            with torch.inference_mode(), _autocast(device, precision, amp_dtype):
                model(x)
        if args.cuda_graph and device.type == 'cuda':
            return _graphed(step)
        return step

    model.train()
    target = torch.randint(0, 1000, (args.batch_size, ), device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == 'amp'
                                  and amp_dtype == torch.float16)
    # a whole training step as one CUDA graph (not with fp16's loss scaling, which reads
    # the overflow flag on the host)
    graphed = args.cuda_graph and device.type == 'cuda' and not scaler.is_enabled()
    opt_kw = dict(fused=True, capturable=graphed) if device.type == 'cuda' else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.05, **opt_kw)

    def step():
        with _autocast(device, precision, amp_dtype):
            loss = _loss(model(x), target)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return _graphed(step) if graphed else step


def _graphed(step):
    """``step`` captured once as a CUDA graph; the returned step replays it (no Python
    or launch overhead per kernel: what ``torch.compile(mode='reduce-overhead')`` or a
    hand-captured step runs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (autotuning, caches)
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def measure(step, device, warmup, iters, batch, reset_peak=True):
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == 'cuda' and reset_peak:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None
    return batch * iters / elapsed, peak


def _device_us(event):
    for key in ('self_device_time_total', 'self_cuda_time_total'):
        if hasattr(event, key):
            return getattr(event, key)
    return 0.


def profile(step, device, rows, label, steps=3):
    """Print the top GPU kernels of ``steps`` steps; returns the kernels' GPU time per
    step and the share of the selective-scan kernels in it."""
    from torch.profiler import ProfilerActivity, profile as tprofile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with tprofile(activities=acts) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    events = prof.key_averages()
    for key in ('self_device_time_total', 'self_cuda_time_total', 'self_cpu_time_total'):
        try:
            table = events.table(sort_by=key, row_limit=rows, max_name_column_width=70)
            break
        except Exception:  # older/newer torch name the column differently
            continue
    print(f'\n--- profile: {label} ({steps} steps, sorted by self GPU time) ---\n{table}')
    # kernels only (CPU operators' device time is the same kernels counted again, and so
    # is that of the ranges the optimizer annotates on the GPU timeline)
    kernels = [e for e in events if str(getattr(e, 'device_type', '')).endswith('CUDA')
               and not e.key.startswith(('Optimizer.', 'ProfilerStep'))]
    total = sum(_device_us(e) for e in kernels) / steps / 1e3
    scan = sum(_device_us(e) for e in kernels if '_scan_' in e.key) / steps / 1e3
    launches = sum(e.count for e in kernels) / steps
    if total:
        print(f'GPU time per step {total:.2f} ms in {launches:.0f} kernel launches; '
              f'selective-scan kernels {scan:.2f} ms ({100 * scan / total:.1f}%)')
        for e in sorted(kernels, key=_device_us, reverse=True)[:rows]:
            ms = _device_us(e) / steps / 1e3
            print(f'  {100 * ms / total:5.1f}%  {ms:8.3f} ms  {e.count // steps:5d}x  '
                  f'{e.key[:80]}')
    cpu = sorted((e for e in events if e.self_cpu_time_total > 0),
                 key=lambda e: e.self_cpu_time_total, reverse=True)
    print(f'host: {sum(e.self_cpu_time_total for e in cpu) / steps / 1e3:.2f} ms of '
          'operator self time per step; top:')
    for e in cpu[:rows]:
        print(f'  {e.self_cpu_time_total / steps / 1e3:8.3f} ms  {e.count // steps:5d}x  '
              f'{e.key[:80]}')
    return dict(gpu_ms=total, scan_ms=scan, launches=launches)


# ------------------------------------------------------------------------ correctness
@torch.no_grad()
def check_against_reference(model, backends, args, device, n=8):
    """Max |logit difference| of every backend vs the per-group reference path with
    PyTorch's ops throughout (fp32)."""
    from mmgroupmamba.execution import configure_execution, execution_override
    x = torch.randn(n, 3, *args.img_size, device=device)
    model.eval()
    with execution_override(model, mixer='reference', scan_backend='pytorch',
                            linear_mode='auto', fused_kernels=False):
        ref = model(x).float()
    diffs = {}
    for spec in backends:
        impl, backend = parse_backend(spec)
        if backend_usable(backend, device):
            continue
        configure_execution(model, mixer=impl, scan_backend=backend,
                            linear_mode=args.linear_mode)
        diffs[spec] = {'fp32': (model(x).float() - ref).abs().max().item()}
        if device.type == 'cuda':
            with torch.autocast('cuda', dtype=torch.bfloat16):
                diffs[spec]['amp'] = (model(x).float() - ref).abs().max().item()
    return diffs, ref.abs().max().item()


# ---------------------------------------------------------------------- scan tuning
def _stages(args):
    """((map height, width), width, depth, FFN ratio) of each stage at ``--img-size``."""
    from mmgroupmamba.models import GroupMamba
    settings = GroupMamba._parse_arch(GroupMamba, _arch(args))
    return [(tuple(-(-n // 2**(i + 2)) for n in args.img_size), dim, depth, ratio)
            for i, (dim, depth, ratio) in enumerate(zip(settings['embed_dims'],
                                                        settings['depths'],
                                                        settings['mlp_ratios']))]


def _time_ms(fn, device, n):
    """Milliseconds per call of ``fn``. On CUDA the GPU time: a CUDA graph of one call,
    its replays timed with events (the sweeps time kernels, whose launch overhead would
    hide them at small sizes); elsewhere wall-clock after one untimed call."""
    if device.type == 'cuda':
        replay = _graphed(fn)
        replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def scan_sweep(args, device):
    """Time the fused grouped scan per stage for several tile / warp / segment settings,
    at ``--batch-size`` and ``--img-size`` (or each ``--dense`` shape)."""
    from mmgroupmamba.ops import selective_scan_triton as sst
    dtype = torch.bfloat16 if 'amp' in args.precision else torch.float32
    shapes_of = [(args.batch_size, args.img_size)] if not args.dense else [
        (b, (h, w)) for b, h, w in DENSE_SHAPES]
    # (tile, elements per thread, programs per SM with a carry pass, or 0: one pass with
    # a look-back across one-chunk segments[, ptxas's register cap per thread])
    fwd_grid = [(2048, 16, 4), (2048, 16, 8), (4096, 16, 8), (1024, 8, 8), (2048, 16, 0),
                (4096, 16, 0), (4096, 8, 0), (1024, 8, 0), (1024, 4, 0), (2048, 16, 0, 128)]
    bwd_grid = [(1024, 8, 4), (1024, 8, 8), (2048, 8, 8), (512, 4, 8), (1024, 16, 0),
                (1024, 8, 0), (2048, 8, 0), (2048, 16, 0), (512, 4, 0), (512, 8, 0), (256, 4, 0),
                (1024, 8, 0, 168), (1024, 8, 0, 128)]
    # the backward of groups of at most ``narrow_d`` channels (stages 1-2): (tile,
    # elements per thread), one pass with a look-back
    narrow_grid = [(2048, 16), (2048, 32), (1024, 16), (1024, 8), (4096, 32)]
    saved = dict(sst.TUNING)       # the landed settings: every row starts from them

    def pass_tuning(prefix):
        def tuning(tile, per_thread, per_sm, cap=0):
            return {f'{prefix}_tile': tile, f'{prefix}_per_thread': per_thread,
                    f'{prefix}_look_back': int(per_sm == 0), f'{prefix}_max_registers': cap,
                    'programs_per_sm': per_sm or saved['programs_per_sm']}
        return tuning

    def narrow_tuning(tile, per_thread):
        return dict(bwd_narrow_tile=tile, bwd_narrow_per_thread=per_thread)
    for batch, img in shapes_of:
        args.img_size = img
        # (map, d, R = ceil(d / 16), depth) per stage
        shapes = [(hw, dim // 4, -(-(dim // 4) // 16), depth)
                  for hw, dim, depth, _ in _stages(args)]
        print(f'\nfused scan, batch {batch}, {img[0]}x{img[1]}, {dtype}, stages '
              f'(map, d, R, depth): {shapes}')

        def inputs(hw, d, R, grad):
            mk = lambda *s: torch.randn(*s, device=device)  # noqa: E731
            G = 4
            t = dict(u=mk(batch, *hw, G * d).to(dtype), xdbl=mk(batch, *hw, G * R + 8)
                     .to(dtype), z=mk(batch, *hw, G * d).to(dtype),
                     dt_weight=mk(G, d, R) * 0.3, dt_bias=mk(G * d) * 0.3 - 3,
                     A=-torch.rand(G * d, device=device) - 0.5, D=mk(G * d),
                     ln_weight=mk(G * d), ln_bias=mk(G * d))
            if grad:
                for v in t.values():
                    v.requires_grad_()
            return t

        def forward_call(hw, d, R):
            t = inputs(hw, d, R, False)

            def call():
                with torch.no_grad():
                    sst.grouped_selective_scan_triton(**t)
            return call

        def training_call(hw, d, R):
            t = inputs(hw, d, R, True)
            g = torch.randn(batch, *hw, 4 * d, device=device, dtype=dtype)
            return lambda: sst.grouped_selective_scan_triton(**t).backward(g)

        for title, grid, make_call, tuning in (
                ('inference forward', fwd_grid, forward_call, pass_tuning('fwd')),
                ('training forward + backward', bwd_grid, training_call, pass_tuning('bwd')),
                ('training forward + backward, narrow groups', narrow_grid, training_call,
                 narrow_tuning)):
            print(f'{title} (ms per layer | whole model):')
            for row in grid:
                sst.TUNING.update(saved)
                sst.set_tuning(**tuning(*row))
                times = [_time_ms(make_call(hw, d, R), device, args.iters)
                         for hw, d, R, _ in shapes]
                total = sum(tm * s[3] for tm, s in zip(times, shapes))
                setting = ' '.join(f'{k} {v}' for k, v in tuning(*row).items())
                print(f'  {setting}: ' + '  '.join(f'{tm:7.3f}' for tm in times)
                      + f'  | {total:7.2f} ms', flush=True)
            sst.TUNING.update(saved)
    print('\nrecord the best in selective_scan_triton.TUNING')
    return []


def dwconv_sweep(args, device):
    """Time the fused depthwise conv + activation at this arch's FFN and mixer shapes
    for several launch settings, against cuDNN's depthwise conv + a separate activation."""
    from mmgroupmamba.ops import dwconv
    shapes = []  # (map, channels, act, count per forward): FFN conv, then mixer conv
    for hw, dim, depth, ratio in _stages(args):
        shapes += [(hw, int(dim * ratio), 'gelu', depth), (hw, dim, 'silu', depth)]
    dtype = torch.bfloat16 if 'amp' in args.precision else torch.float32
    B = args.batch_size
    print(f'depthwise conv 3x3 + act, batch {B}, {dtype}; shapes (map, C, act, count): '
          f'{shapes}')

    def run(fn, backward):
        total = 0.
        for hw, C, act, count in shapes:
            x = torch.randn(B, *hw, C, device=device, dtype=dtype, requires_grad=backward)
            w = torch.randn(C, 1, 3, 3, device=device, requires_grad=backward)
            b = torch.randn(C, device=device, requires_grad=backward)
            if backward:
                g = torch.randn(B, *hw, C, device=device, dtype=dtype)
                total += count * _time_ms(lambda: fn(x, w, b, act).backward(g), device,
                                          args.iters)
            else:
                with torch.no_grad():
                    total += count * _time_ms(lambda: fn(x, w, b, act), device, args.iters)
        return total

    def cudnn(x, w, b, act):  # the op's PyTorch composition, weights in x's dtype
        return dwconv._torch_impl(x, w.to(x.dtype), b.to(x.dtype), act)

    def fused(x, w, b, act):
        return dwconv.depthwise_conv3x3_act(x, w, b, act)

    print(f'  cuDNN conv + activation: forward {run(cudnn, False):7.2f} ms, '
          f'forward+backward {run(cudnn, True):7.2f} ms per model step')
    saved = dict(dwconv.TUNING)
    # per pass: the tuning keys a setting names, then the settings
    keys = dict(fwd=('elements', 'block_w', 'warps', 'rows', 'prefetch'),
                bwd=('elements', 'block_w', 'warps', 'rows', 'slide', 'prefetch'))
    grids = dict(fwd=[(2048, 64, 4, 16, 1), (2048, 32, 4, 16, 1), (2048, 16, 4, 16, 1),
                      (1024, 16, 4, 16, 1), (2048, 8, 4, 16, 1), (1024, 8, 4, 16, 1),
                      (1024, 8, 2, 16, 1), (512, 8, 2, 16, 1), (2048, 8, 8, 16, 1),
                      (1024, 8, 4, 32, 1), (2048, 32, 4, 16, 0)],
                 bwd=[(512, 64, 4, 16, 0, 0), (1024, 32, 4, 16, 0, 0), (1024, 16, 4, 16, 0, 0),
                      (512, 16, 4, 16, 1, 0), (512, 16, 4, 16, 1, 1), (256, 8, 2, 16, 1, 1),
                      (512, 8, 4, 16, 1, 1), (1024, 16, 4, 16, 1, 1), (1024, 32, 4, 16, 1, 1),
                      (1024, 16, 8, 16, 1, 1), (256, 16, 2, 16, 1, 1), (512, 16, 4, 32, 1, 1),
                      (2048, 16, 8, 16, 1, 1)])
    for pass_, grid in grids.items():
        backward = pass_ == 'bwd'
        for setting in grid:
            named = dict(zip(keys[pass_], setting))
            dwconv.set_tuning(**{f'{pass_}_{key}': value for key, value in named.items()})
            print(f'  fused {pass_} ' + ' '.join(f'{k} {v:>4}' for k, v in named.items())
                  + f': {"forward+backward" if backward else "forward"} '
                  f'{run(fused, backward):7.2f} ms', flush=True)
        dwconv.TUNING.update(saved)
    return []


# ------------------------------------------------------------------------------ main
def run_one(make_model, label, spec, mode, precision, args, device, results, prof=False,
            graphed=None):
    """Time one row; ``graphed`` (default ``--cuda-graph``): the peak memory counts the
    warm-up and capture (a graph's memory pool is allocated then)."""
    graphed = args.cuda_graph if graphed is None else graphed
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    row = dict(model=label, backend=spec, mode=mode, precision=precision,
               batch=args.batch_size, img=tuple(args.img_size))
    try:
        model = make_model()
        if device.type == 'cuda':
            # graphed rows: the peak must include the eager warm-up and the capture (the
            # graph's memory pool is allocated then, not during the replays)
            torch.cuda.reset_peak_memory_stats(device)
        step = make_step(model, mode, precision, args, device)
        warmup = args.warmup if mode == 'infer' else max(2, args.warmup // 2)
        iters = args.iters if mode == 'infer' else max(3, args.iters // 2)
        t0 = time.perf_counter()
        step()  # first call: Triton compilation, cuDNN autotuning
        _sync(device)
        row['first_call_s'] = time.perf_counter() - t0
        row['img_s'], row['peak_gib'] = measure(step, device, warmup, iters, args.batch_size,
                                                reset_peak=not graphed)
        if prof:
            row['profile'] = profile(step, device, args.profile_rows,
                                     f'{label} {spec} {mode} {precision} batch '
                                     f'{args.batch_size} {args.img_size}')
    except torch.cuda.OutOfMemoryError:
        row['error'] = 'OOM'
    except Exception as e:  # report and go on with the other rows
        row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:100]}'
    finally:
        model = step = None
    results.append(row)
    _print_row(row)
    return row


def _print_row(row):
    if 'error' in row:
        print(f"  {row['model']:<14} {row['backend']:<26} {row['mode']:<6} "
              f"{row['precision']:<5} {row['error']}", flush=True)
        return
    peak = f"{row['peak_gib']:.2f}" if row.get('peak_gib') is not None else '-'
    print(f"  {row['model']:<14} {row['backend']:<26} {row['mode']:<6} "
          f"{row['precision']:<5} {row['img_s']:>9.1f} img/s  peak {peak} GiB  "
          f"(first call {row['first_call_s']:.1f}s)", flush=True)


def print_table(results, ours_label):
    ok = [r for r in results if 'error' not in r]
    base = {(r['model'], r['mode'], r['precision']): r for r in ok
            if r['model'] in TIMM_BASELINES}
    ref = {}
    for r in sorted(ok, key=lambda r: r['backend'] != 'reference-layer'):
        if r['model'] == ours_label and r['backend'].startswith('reference-layer'):
            ref.setdefault((r['mode'], r['precision']), r)
    cols = ['model', 'backend', 'mode', 'prec', 'img/s', 'peak GiB', 'vs ref-layer',
            'vs Swin-T', 'vs ConvNeXt-T', 'ref mem x']
    widths = [14, 26, 6, 5] + [12] * 6
    print('\n' + ' | '.join(f'{c:<{w}}' if i < 4 else f'{c:>{w}}'
                            for i, (c, w) in enumerate(zip(cols, widths))))
    for r in results:
        key = (r['mode'], r['precision'])
        if 'error' in r:
            print(f"{r['model']:<14} | {r['backend']:<26} | {r['mode']:<6} | "
                  f"{r['precision']:<5} | {r['error']}")
            continue

        def ratio(other, field='img_s'):
            if other is None or other.get(field) in (None, 0) or r.get(field) is None:
                return '-'
            return f'{r[field] / other[field]:.2f}x'
        peak = f"{r['peak_gib']:.2f}" if r.get('peak_gib') is not None else '-'
        print(f"{r['model']:<14} | {r['backend']:<26} | {r['mode']:<6} | {r['precision']:<5} | "
              f"{r['img_s']:>12.1f} | {peak:>12} | {ratio(ref.get(key)):>12} | "
              f"{ratio(base.get(('Swin-T',) + key)):>12} | "
              f"{ratio(base.get(('ConvNeXt-T',) + key)):>12} | "
              f"{ratio(ref.get(key), 'peak_gib'):>12}")


def make_timm_baseline(name, args, device):
    import timm
    timm_name = TIMM_BASELINES.get(name, name)
    kw = {'img_size': args.img_size} if 'swin' in timm_name else {}
    if args.backbone_only:
        kw['features_only'] = True
    model = timm.create_model(timm_name, pretrained=False, **kw).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def measure_configuration(args, device, backends, mode, precision, ours_label, make_ours,
                          results):
    """Our rows (each backend, eager, with ``--graph-backbone`` and with
    ``--compile-backbone``) and the baselines at the current batch size and input size."""
    for spec in backends:
        variants = [(spec, None)]
        grouped = parse_backend(spec)[0] == 'grouped'
        if args.graph_backbone and device.type == 'cuda' and grouped:
            variants.append((f'{spec}+backbone-graph', 'graph'))
        if args.compile_backbone and grouped:
            variants.append((f'{spec}+backbone-compile', 'compile'))
        for label, execution in variants:
            # --dense profiles the eager rows: the same kernels as the graphed ones
            run_one(make_ours(spec, execution), ours_label, label, mode, precision,
                    args, device, results,
                    prof=args.profile and not (args.dense and execution),
                    graphed=args.cuda_graph or execution == 'graph')
    for name in (args.baselines or []):
        try:
            import timm  # noqa: F401
        except ImportError:
            print(f'  {name}: timm not importable, skipped')
            continue
        # --dense --profile: the baselines' GPU time per step too, the comparison that
        # does not move with the host (their eager steps can be host-bound)
        run_one(lambda name=name: make_timm_baseline(name, args, device), name, 'timm', mode,
                precision, args, device, results, prof=args.profile and args.dense)


def print_dense_table(results, ours_label):
    """ms per step of every --dense row, ratios to Swin-T and ConvNeXt-T (eager) at the
    same shape and mode; below 1.00x is faster than the baseline. With ``--profile``
    also the GPU time per step of our eager step and of Swin-T's (the profiler's kernel
    time) and their ratio."""
    def ms(r):
        return 1e3 * r['batch'] / r['img_s'] if r.get('img_s') else None

    rows = {}
    for r in results:
        rows[(r['batch'], r['img'], r['mode'], r['model'], r['backend'])] = r
    print('\nbackbone only, bf16 autocast, ms per step (training: forward, backward, AdamW; '
          'ratios: time / baseline time)')
    cols = ['shape', 'mode', 'GM eager', 'GM graph', 'GM compiled', 'Swin-T', 'ConvNeXt-T',
            'graph/Swin', 'graph/CNX', 'eager/Swin', 'compiled/Swin', 'scan %', 'GM GPU ms',
            'Swin GPU ms', 'GPU GM/Swin']
    print(' | '.join(f'{c:>12}' for c in cols))
    for batch, h, w in DENSE_SHAPES:
        for mode in ('train', 'infer'):
            key = (batch, (h, w), mode)
            eager = rows.get(key + (ours_label, 'triton'))
            graph = rows.get(key + (ours_label, 'triton+backbone-graph'))
            compiled = rows.get(key + (ours_label, 'triton+backbone-compile'))
            swin, cnx = rows.get(key + ('Swin-T', 'timm')), rows.get(key + ('ConvNeXt-T', 'timm'))
            if eager is None and graph is None:
                continue
            t = {k: ms(r) if r is not None else None for k, r in
                 dict(eager=eager, graph=graph, compiled=compiled, swin=swin,
                      cnx=cnx).items()}

            def ratio(a, b):
                return f'{t[a] / t[b]:.2f}x' if t[a] and t[b] else '-'
            prof = (eager or {}).get('profile') or {}
            scan = (f"{100 * prof['scan_ms'] / prof['gpu_ms']:.1f}" if prof.get('gpu_ms')
                    else '-')
            gpu_ms, swin_gpu_ms = prof.get('gpu_ms'), ((swin or {}).get('profile')
                                                       or {}).get('gpu_ms')
            cells = [f'{batch}x{h}x{w}', mode] + [f'{t[k]:.1f}' if t[k] else '-' for k in
                                                  ('eager', 'graph', 'compiled', 'swin',
                                                   'cnx')]
            cells += [ratio('graph', 'swin'), ratio('graph', 'cnx'), ratio('eager', 'swin'),
                      ratio('compiled', 'swin'), scan]
            cells += [f'{v:.2f}' if v else '-' for v in (gpu_ms, swin_gpu_ms)]
            cells.append(f'{gpu_ms / swin_gpu_ms:.2f}x' if gpu_ms and swin_gpu_ms else '-')
            print(' | '.join(f'{c:>12}' for c in cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='tiny',
                        help='tiny / small / base preset, or an arch dict as JSON')
    parser.add_argument('--config', help='benchmark the model of this config instead')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--img-size', type=int, nargs='+', default=[224],
                        metavar=('H', 'W'), help='input size: one side, or H W')
    parser.add_argument('--backbone-only', action='store_true',
                        help='time the backbone\'s four NCHW stage outputs (as mmdet / mmseg '
                        'call it; loss: sum of their means) against timm\'s baselines with '
                        'features_only=True')
    parser.add_argument('--dense', action='store_true',
                        help='the detection / segmentation preset: backbone only, bf16 '
                        'autocast, training and inference at ' + ', '.join(
                            f'{b} x {h}x{w}' for b, h, w in DENSE_SHAPES)
                        + ', ours eager and with cuda_graph=True, baselines eager; '
                        'prints ms per step with ratios')
    parser.add_argument('--precision', nargs='+', default=['fp32', 'amp'],
                        choices=['fp32', 'amp'])
    parser.add_argument('--amp-dtype', default='bf16', choices=['bf16', 'fp16'])
    parser.add_argument('--mode', nargs='+', default=['infer', 'train'],
                        choices=['infer', 'train'])
    parser.add_argument('--backends', nargs='+',
                        default=['triton', 'pytorch', 'mamba_ssm', 'reference-layer'],
                        help='triton, pytorch, mamba_ssm (grouped layer with that scan), '
                        'reference-layer[:backend] (per-group, as released)')
    parser.add_argument('--linear-mode', default='auto', choices=['auto', 'blockdiag', 'bmm'],
                        help='how the grouped layer runs the groups\' projections')
    parser.add_argument('--baselines', nargs='*', default=list(TIMM_BASELINES),
                        help='timm baselines to run (needs timm); none: --baselines')
    parser.add_argument('--with-cp', action='store_true',
                        help='activation checkpointing of every block')
    parser.add_argument('--ffn-cp', action='store_true',
                        help='recompute the FFNs\' depthwise conv + GELU in the backward')
    parser.add_argument('--mixer-cp', action='store_true',
                        help='activation checkpointing of the GroupMamba layers only')
    parser.add_argument('--unfused', action='store_true',
                        help='our rows without the fused LayerNorm, depthwise-conv and '
                        '3xTF32 linear kernels (PyTorch\'s ops instead), to measure what '
                        'they buy')
    parser.add_argument('--scan-sweep', action='store_true',
                        help='only time the fused Triton scan at this arch\'s stage shapes '
                        'for several launch configurations, then exit')
    parser.add_argument('--dwconv-sweep', action='store_true',
                        help='only time the fused depthwise conv at this arch\'s shapes '
                        'for several launch settings (and cuDNN\'s), then exit')
    parser.add_argument('--channels-last', action='store_true',
                        help='feed channels-last images (and timm models in channels-last)')
    parser.add_argument('--compile', action='store_true', help='torch.compile our models')
    parser.add_argument('--cuda-graph', action='store_true',
                        help='every row (ours and the baselines) replays a CUDA graph of '
                        'its step (forward; or forward, backward and AdamW step) instead '
                        'of launching every kernel from Python')
    parser.add_argument('--graph-backbone', action='store_true',
                        help='each grouped row again with the backbone\'s `cuda_graph=True` '
                        '(CUDA graphs of the backbone\'s forward, and backward in training, '
                        'replayed per call: what a user switches on in a config; head, '
                        'loss and optimizer stay eager)')
    parser.add_argument('--compile-backbone', action='store_true',
                        help='each grouped row again with the backbone\'s `compile=True` '
                        '(torch.compile of its forward, dynamic in H and W, replayed as '
                        'Inductor\'s CUDA graphs; the first call, which compiles, is '
                        'reported and not timed)')
    parser.add_argument('--compile-options', type=_compile_options, default=True,
                        metavar='JSON',
                        help='with --compile-backbone: the backbone\'s `compile` as a dict '
                        'of torch.compile arguments instead of True, e.g. '
                        '\'{"mode": "default"}\' (Inductor\'s kernels without its CUDA '
                        'graphs) or \'{"mode": "reduce-overhead", "dynamic": false}\' '
                        '(static sizes: one compilation and graph per size)')
    parser.add_argument('--tf32', action='store_true', help='allow TF32 matmuls in fp32')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--iters', type=int, default=20,
                        help='timed iterations (training: half as many)')
    parser.add_argument('--check', action='store_true',
                        help='first compare every backend\'s logits with the reference')
    parser.add_argument('--profile', action='store_true',
                        help='print the top CUDA kernels of each of our rows')
    parser.add_argument('--profile-rows', type=int, default=20)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args(argv)
    if len(args.img_size) not in (1, 2):
        parser.error('--img-size takes one side or H W')
    args.img_size = tuple(args.img_size) * (3 - len(args.img_size))
    if args.dense:
        args.backbone_only = args.graph_backbone = True
        args.precision, args.amp_dtype = ['amp'], 'bf16'   # --mode picks train / infer
        args.backends = ['triton']

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    import mmgroupmamba  # noqa: F401
    ours_label = (osp.splitext(osp.basename(args.config))[0][:14] if args.config
                  else f'GroupMamba-{args.arch[0].upper()}' if args.arch[0].isalpha()
                  else 'GroupMamba')

    print(f'device: {torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}'
          f'  torch {torch.__version__}  batch {args.batch_size}  '
          f'{args.img_size[0]}x{args.img_size[1]}  amp dtype {args.amp_dtype}  '
          f'tf32 {args.tf32}  channels_last {args.channels_last}  compile {args.compile}  '
          f'with_cp {args.with_cp}  mixer_cp {args.mixer_cp}  ffn_cp {args.ffn_cp}  '
          f'unfused {args.unfused}  '
          f'cuda_graph {args.cuda_graph}  graph_backbone {args.graph_backbone}  '
          f'linear_mode {args.linear_mode}')
    try:
        import triton
        print(f'triton {triton.__version__}')
    except ImportError:
        print('triton not importable')
    print('reference-layer = the per-group execution as released (one VSSS per group, '
          'flipped/transposed copies), with mamba-ssm\'s scan if installed else the '
          'PyTorch scan: it stands in for the released implementation.')
    print(f'released implementation on one H200 (issue): infer fp32 '
          f'{RELEASED_H200[("infer", "fp32")]}, infer AMP {RELEASED_H200[("infer", "amp")]}, '
          f'train AMP {RELEASED_H200[("train", "amp")]} img/s (21.7 GiB)')

    def make_ours(spec, execution=None):
        """``execution``: None (eager), ``'graph'`` (the backbone's ``cuda_graph=True``)
        or ``'compile'`` (its ``compile=True``)."""
        def make():
            # the reference rows stand in for the released code: never checkpointed
            reference = parse_backend(spec)[0] == 'reference'
            run_args = argparse.Namespace(**vars(args))
            if reference:
                run_args.with_cp = run_args.mixer_cp = run_args.ffn_cp = False
            model = build_ours(run_args).to(device)
            configure(model, spec, run_args)
            if execution is not None:
                from mmgroupmamba.models import GroupMamba
                for m in model.modules():
                    if isinstance(m, GroupMamba):
                        if execution == 'graph':
                            m.execution.cuda_graph = True
                        else:
                            m.execution.compile = args.compile_options
            if args.channels_last:
                model = model.to(memory_format=torch.channels_last)
            if args.compile:
                model = torch.compile(model)
            return model
        return make

    if args.scan_sweep:
        return scan_sweep(args, device)
    if args.dwconv_sweep:
        return dwconv_sweep(args, device)

    backends = []
    for spec in args.backends:
        _, backend = parse_backend(spec)
        why = backend_usable(backend, device)
        if why:
            print(f'skipping {spec}: {why}')
        else:
            backends.append(spec)

    if args.check:
        model = build_ours(args).to(device)
        diffs, scale = check_against_reference(model, backends, args, device)
        print(f'\nmax |logit - reference| (batch 8, logits up to {scale:.2f}):')
        for spec, d in diffs.items():
            print(f'  {spec:<26} ' + '  '.join(f'{k} {v:.2e}' for k, v in d.items()))
        del model

    results = []
    print('\nmeasuring:')
    shapes = ([(b, (h, w)) for b, h, w in DENSE_SHAPES] if args.dense
              else [(args.batch_size, args.img_size)])
    for args.batch_size, args.img_size in shapes:
        for mode in args.mode:
            for precision in args.precision:
                measure_configuration(args, device, backends, mode, precision, ours_label,
                                      make_ours, results)
    if args.dense:
        print_dense_table(results, ours_label)
    print_table(results, ours_label)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(args=vars(args), results=results), f, indent=1)
    return results


if __name__ == '__main__':
    main()
