import os
import os.path as osp

import pytest
import torch

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# tests/ (helpers) and its folders, which mirror the package (ops, models, runtime) and
# the tasks and tools; test modules import each other's helpers by module name
TEST_DIRS = [osp.dirname(osp.abspath(__file__))] + sorted(
    osp.join(osp.dirname(osp.abspath(__file__)), d) for d in
    ('ops', 'models', 'runtime', 'tasks', 'tools'))

# The smallest GroupMamba the unit tests build (stem 8, widths 16/32/48/64, one block per
# stage); the tests that want the released block structure use the 'demo' preset instead.
# Shared, so do not mutate it: derive variants with dict(MICRO_ARCH, key=...).
MICRO_ARCH = dict(stem_channels=8, embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                  mlp_ratios=[2, 2, 2, 2])


def reference_dir():
    """The authors' fixtures: $MMGROUPMAMBA_REFERENCE, else ../shared/reference."""
    return os.environ.get('MMGROUPMAMBA_REFERENCE',
                          osp.join(REPO_ROOT, '..', 'shared', 'reference'))


@pytest.fixture(scope='session')
def reference():
    root = reference_dir()
    ckpt = osp.join(root, 'official_small_checkpoint.pth')
    if not osp.exists(ckpt):
        pytest.skip(f'reference fixtures not found in {root}')
    # through the package's loading policy: the authors' format must load without
    # unpickling anything outside the allow-list
    from mmgroupmamba.utils import load_checkpoint_file
    return dict(
        root=root,
        checkpoint_path=ckpt,
        checkpoint=load_checkpoint_file(ckpt, map_location='cpu'),
        expected=load_checkpoint_file(osp.join(root, 'official_small_expected.pth'),
                                      map_location='cpu'),
        tiny_keys_path=osp.join(root, 'official_tiny_state_dict.tsv'),
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

try:
    import triton  # noqa: F401
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

# the compiled Triton kernels, on a GPU
requires_triton_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_TRITON), reason='needs a CUDA GPU and Triton')

# Triton kernels on CPU through Triton's interpreter, in a subprocess (the interpreter is
# switched on by an environment variable read at import). GPU machines run the compiled
# kernels in the GPU tests instead.
requires_triton_interpreter = pytest.mark.skipif(
    not HAS_TRITON or os.environ.get('MMGM_SKIP_TRITON_INTERPRET') == '1'
    or torch.cuda.is_available(),
    reason='needs Triton (its CPU interpreter) on a machine without CUDA')


# Seconds before an interpreter script counts as hung. The interpreter runs an
# associative scan with a custom combine element by element in Python, and the
# compiled-backbone script (a three-operand reverse scan in every scan backward since
# 72f30da) ran past a former 1500 s on a 2-core machine (alone, too: 1506 s when stopped).
INTERPRETER_TIMEOUT_S = 3000


def run_in_triton_interpreter(body: str):
    """Run ``body`` (Python, with the test folders and the repository importable) under
    ``TRITON_INTERPRET=1``; it must print ``interpreter ok`` at the end."""
    import subprocess
    import sys
    import textwrap
    script = (f'import sys; sys.path[:0] = {[REPO_ROOT, *TEST_DIRS]!r}\n'
              + textwrap.dedent(body))
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            env=dict(os.environ, TRITON_INTERPRET='1'),
                            timeout=INTERPRETER_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'interpreter ok' in result.stdout


@pytest.fixture(autouse=True)
def _restore_default_scope():
    """A Runner built inside a test makes its scope (mmdet, mmseg, ...) the process-wide
    default; restore the previous scopes so later tests see a clean registry context."""
    from mmengine.registry import DefaultScope
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)


# Requested by the Triton kernel and model tests (tests/ops/test_selective_scan_triton.py,
# test_dwconv.py, tests/models/test_triton_paths.py) through
# ``pytestmark = pytest.mark.usefixtures('_no_tf32', '_restore_tuning')``. Not autouse in a
# tests/ops/conftest.py: a conftest.py in a folder without ``__init__.py`` is imported as
# module ``conftest`` as well and would replace this one for every ``from conftest import``
# collected after it.
@pytest.fixture
def _no_tf32():
    # cuDNN convolutions default to TF32 on Ampere+, which alone moves fp32 logits by
    # ~1e-3; every fp32 comparison here is against true fp32 references.
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@pytest.fixture
def _restore_tuning():
    """Tests that pick launch settings leave the defaults behind them."""
    try:
        from mmgroupmamba.ops import dwconv, selective_scan_triton
    except ImportError:  # no Triton
        yield
        return
    saved = [(m.TUNING, dict(m.TUNING)) for m in (dwconv, selective_scan_triton)]
    yield
    for tuning, values in saved:
        tuning.clear()
        tuning.update(values)


def released_small_classifier(reference, device='cpu'):
    """The released fixture's small classifier (backbone + class-token head) with its
    weights, in eval mode (skips without mmpretrain, which the head builds on)."""
    pytest.importorskip('mmpretrain', reason='the classification head needs mmpretrain')
    from mmgroupmamba.models import GroupMamba, GroupMambaClsHead
    from mmgroupmamba.utils import convert_official_state_dict, infer_official_arch
    arch = infer_official_arch(reference['checkpoint']['model'])
    sd = convert_official_state_dict(reference['checkpoint']['model'])
    backbone = GroupMamba({k: arch[k] for k in ('stem_channels', 'embed_dims', 'depths',
                                                'mlp_ratios')},
                          out_indices=(3, ), final_norm=False, drop_path_rate=0.)
    head = GroupMambaClsHead(arch['num_classes'], arch['embed_dims'][-1],
                             mlp_ratio=arch['cls_mlp_ratio'])
    backbone.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith('backbone.')})
    head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith('head.')})
    return torch.nn.Sequential(backbone, head).to(device).eval()
