"""The model index: a metafile entry for every config, models by name in mmpretrain
(get_model, list_models, inference_model, ImageClassificationInferencer), and the index,
configs and tools packaged in the wheel under mmgroupmamba/.mim, where `mim search`
finds them."""
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml

import mmgroupmamba  # noqa: F401  (registers the model index)
from conftest import REPO_ROOT
from mmgroupmamba.datasets import SHAPE_CLASSES, generate_classification_set

PRESETS = {'groupmamba-t_in1k': 23361917, 'groupmamba-s_in1k': 34781555,
           'groupmamba-b_in1k': 57150838}
PAPER_TOP1 = {'groupmamba-t_in1k': 83.3, 'groupmamba-s_in1k': 83.9,
              'groupmamba-b_in1k': 84.5}


def _metafiles():
    with open(osp.join(REPO_ROOT, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    return [osp.join(REPO_ROOT, p) for p in index['Import']]


def _models():
    models = []
    for path in _metafiles():
        with open(path) as f:
            models += yaml.safe_load(f)['Models']
    return models


def test_every_config_has_one_metafile_entry():
    configs = sorted(osp.relpath(p, REPO_ROOT) for p in
                     glob.glob(osp.join(REPO_ROOT, 'configs', '**', '*.py'), recursive=True)
                     if '_base_' not in p)
    models = _models()
    listed = [m['Config'] for m in models]
    assert sorted(listed) == configs, 'each config exactly once in a metafile'
    # every metafile under configs/ is imported by the index
    metafiles = glob.glob(osp.join(REPO_ROOT, 'configs', '*', 'metafile.yml'))
    assert sorted(metafiles) == sorted(_metafiles())
    names = [m['Name'] for m in models]
    assert len(set(names)) == len(names)
    for m in models:
        assert m['Name'] == m['Name'].lower(), 'mmpretrain looks names up in lower case'
        assert 'Weights' not in m, 'no trained weights exist yet'


def test_paper_figures_are_marked_as_the_papers():
    by_name = {m['Name']: m for m in _models()}
    for name, top1 in PAPER_TOP1.items():
        m = by_name[name]
        assert m['Metadata']['Results Source'] == 'paper'
        result, = m['Results']
        assert (result['Task'], result['Dataset']) == ('Image Classification',
                                                       'ImageNet-1k')
        assert result['Metrics'] == {'Top 1 Accuracy': top1}
        assert m['Metadata']['Parameters'] == PRESETS[name]


def test_list_models_and_get_model_build_the_released_tiny():
    from mmpretrain import get_model, list_models
    names = list_models('groupmamba*')
    assert set(PRESETS) | {'groupmamba-demo_shapes'} <= set(names)
    model = get_model('groupmamba-t_in1k')
    assert type(model).__name__ == 'DistillImageClassifier'
    assert sum(p.numel() for p in model.parameters()) == PRESETS['groupmamba-t_in1k']
    assert model.backbone.embed_dims == [64, 128, 348, 448]
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 23.36


@pytest.fixture(scope='module')
def demo_checkpoint(tmp_path_factory):
    """A checkpoint of the demo classifier with perturbed weights, as tools/train.py
    writes it (``state_dict`` and the dataset's classes in ``meta``)."""
    from mmpretrain import get_model
    model = get_model('groupmamba-demo_shapes')
    torch.manual_seed(1)
    state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    path = str(tmp_path_factory.mktemp('ckpt') / 'demo.pth')
    torch.save({'state_dict': state, 'meta': {'dataset_meta': {
        'classes': list(SHAPE_CLASSES)}}}, path)
    return path, state


def test_get_model_loads_a_checkpoint_by_name(demo_checkpoint):
    from mmpretrain import get_model
    path, state = demo_checkpoint
    model = get_model('groupmamba-demo_shapes', pretrained=path)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert model._dataset_meta['classes'] == list(SHAPE_CLASSES)  # what inferencers read


def test_inference_by_name_matches_the_model(demo_checkpoint, tmp_path):
    from mmpretrain import get_model, inference_model
    from mmpretrain.apis import ImageClassificationInferencer
    path, _ = demo_checkpoint
    root = generate_classification_set(str(tmp_path / 'shapes'), num_train_per_class=1,
                                       num_val_per_class=1, image_size=64)
    image = sorted(glob.glob(osp.join(root, 'val', '*', '*')))[0]

    result = inference_model('groupmamba-demo_shapes', image, pretrained=path)
    by_class = ImageClassificationInferencer('groupmamba-demo_shapes', pretrained=path)
    again = by_class(image)[0]
    assert result['pred_class'] in SHAPE_CLASSES
    assert result['pred_class'] == again['pred_class']
    assert result['pred_scores'] == pytest.approx(again['pred_scores'])

    # the same scores as the model run on the preprocessed image by hand
    import mmcv
    model = get_model('groupmamba-demo_shapes', pretrained=path)
    img = torch.from_numpy(mmcv.imread(image)).permute(2, 0, 1).float()
    data = model.data_preprocessor({'inputs': [img]}, False)
    with torch.no_grad():
        scores = model(data['inputs'], mode='tensor').softmax(-1)[0]
    assert result['pred_scores'] == pytest.approx(scores.numpy(), abs=1e-5)
    assert result['pred_label'] == int(scores.argmax())


def test_tiny_inferencer_by_name_without_weights(tmp_path):
    from mmpretrain.apis import ImageClassificationInferencer
    root = generate_classification_set(str(tmp_path / 'shapes'), num_train_per_class=1,
                                       num_val_per_class=1, image_size=64)
    image = sorted(glob.glob(osp.join(root, 'val', '*', '*')))[0]
    inferencer = ImageClassificationInferencer('groupmamba-t_in1k', pretrained=False)
    result = inferencer(image)[0]
    assert result['pred_scores'].shape == (1000, )  # ImageNet classes, 224x224 pipeline
    assert 0 <= result['pred_label'] < 1000


def _mim_files_in_wheel(tmp_path):
    """Build the wheel from a copy of the tracked sources (a build in place would replace
    the links of the editable install in mmgroupmamba/.mim by copies)."""
    src = tmp_path / 'src'
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                           cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for rel in files:
        if osp.isfile(osp.join(REPO_ROOT, rel)):
            os.makedirs(osp.dirname(src / rel), exist_ok=True)
            shutil.copy2(osp.join(REPO_ROOT, rel), src / rel)
    out = tmp_path / 'wheel'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
                    '--no-build-isolation', '-w', str(out), str(src)], check=True,
                   capture_output=True)
    wheel, = glob.glob(str(out / 'mmgroupmamba-*.whl'))
    return wheel


def test_wheel_ships_index_configs_and_tools_and_mim_search_lists_them(tmp_path):
    wheel = _mim_files_in_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    mim = 'mmgroupmamba/.mim/'
    assert mim + 'model-index.yml' in names
    for m in _models():
        assert mim + m['Config'] in names, m['Config']
    for path in _metafiles():
        assert mim + osp.relpath(path, REPO_ROOT) in names
    assert mim + 'configs/_base_/default_runtime_mmpretrain.py' in names
    for tool in ('train.py', 'test.py', 'dist_train.sh', 'demo/image_demo.py',
                 'deployment/export_onnx.py', 'analysis/visualize_erf.py'):
        assert mim + 'tools/' + tool in names, tool

    # installed from the wheel (a pure-Python wheel installs by unpacking), the package
    # finds its index and configs in .mim ...
    target = tmp_path / 'site'
    zipfile.ZipFile(wheel).extractall(target)
    env = dict(os.environ, PYTHONPATH=str(target))
    probe = subprocess.run(
        [sys.executable, '-c', 'import mmgroupmamba, mmpretrain; '
         'from mmgroupmamba.apis import model_index_root; print(model_index_root()); '
         'print(mmpretrain.get_model("groupmamba-demo_shapes").backbone.embed_dims)'],
        env=env, capture_output=True, text=True, cwd=str(tmp_path))
    assert probe.returncode == 0, probe.stderr[-2000:]
    root, dims = probe.stdout.strip().splitlines()[-2:]
    assert root == str(target / 'mmgroupmamba' / '.mim')
    assert dims == '[32, 64, 96, 128]'
    # ... and so does `mim search` (which reads <installed package>/.mim/model-index.yml)
    mim_cli = shutil.which('mim', path=osp.dirname(sys.executable))
    if mim_cli is None:
        pytest.skip('openmim is not installed (requirements/mim.txt)')
    search = subprocess.run([mim_cli, 'search', 'mmgroupmamba'], env=env,
                            capture_output=True, text=True, cwd=str(tmp_path))
    assert search.returncode == 0, search.stderr[-2000:]
    for m in _models():
        assert f'config id: {m["Name"]}' in search.stdout
    assert 'imagenet-1k/top_1_accuracy' in search.stdout


def test_missing_index_warns_instead_of_breaking_the_import(monkeypatch, tmp_path):
    from mmgroupmamba.apis import model_index
    monkeypatch.setattr(model_index, 'PACKAGE_DIR', str(tmp_path / 'pkg' / 'mmgroupmamba'))
    with pytest.raises(FileNotFoundError, match='model-index.yml'):
        model_index.model_index_root()
    with pytest.warns(UserWarning, match='not available by name'):
        assert model_index.register_model_index() is False
