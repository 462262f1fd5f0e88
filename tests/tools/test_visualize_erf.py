"""tools/analysis/visualize_erf.py: the effective receptive field computation on a network
whose receptive field is known, and the tool on the demo model writing its PNG."""
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import REPO_ROOT
from mmgroupmamba.datasets import generate_classification_set
from tools_import import _load

erf_tool = _load('visualize_erf', 'analysis', 'visualize_erf.py')
DEMO = osp.join(REPO_ROOT, 'configs', 'demo', 'groupmamba-demo_shapes.py')


class TwoConvs(nn.Module):
    """Two 3x3 convolutions with weights 1: the centre output sees a 5x5 window, the
    input pixel at offset (dy, dx) through (3 - |dy|)(3 - |dx|) paths, per channel."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1, bias=False),
                                   nn.Conv2d(2, 4, 3, padding=1, bias=False))
        for conv in self.convs:
            nn.init.ones_(conv.weight)

    def forward(self, x):
        return (self.convs(x), )


def test_erf_of_a_known_receptive_field():
    images = [torch.randn(1, 3, 9, 11) for _ in range(3)]
    erf = erf_tool.effective_receptive_field(TwoConvs(), images)
    paths = np.outer([1, 2, 3, 2, 1], [1, 2, 3, 2, 1])
    expected = np.zeros((9, 11))
    # 3 input channels, 2 middle and 4 output channels per path
    expected[2:7, 3:8] = paths * 2 * 4 * 3
    np.testing.assert_allclose(erf, expected)
    ratios = erf_tool.high_contribution_area_ratios(erf)
    # the centre pixel holds 9/81 of the total, the 3x3 square 49/81, the 5x5 all of it
    assert ratios == pytest.approx({0.2: 9 / 99, 0.3: 9 / 99, 0.5: 9 / 99, 0.99: 25 / 99})


def test_tool_writes_the_png_for_the_demo_model(tmp_path):
    from PIL import Image
    root = generate_classification_set(str(tmp_path / 'shapes'), num_train_per_class=1,
                                       num_val_per_class=1, image_size=64)
    out = str(tmp_path / 'erf.png')
    erf, ratios = erf_tool.main([DEMO, '--images', osp.join(root, 'val'), '--out', out,
                                 '--size', '64', '64', '--num-images', '3'])
    assert erf.shape == (64, 64) and (erf >= 0).all() and erf.sum() > 0
    with Image.open(out) as png:
        assert png.format == 'PNG' and min(png.size) >= 200
    assert 0 < ratios[0.2] <= ratios[0.5] <= ratios[0.99] <= 1
    # the scans reach beyond the convolutions: pixels far from the centre contribute
    assert erf[:8].sum() > 0 and erf[-8:].sum() > 0

    with pytest.raises(FileNotFoundError, match='--images'):
        erf_tool.main([DEMO, '--images', str(tmp_path / 'none'), '--out', out])
