"""The package's model index (``model-index.yml``, OpenMMLab's metafile format) and its
registration in mmpretrain's model hub, so that models are found by name:
``mmpretrain.get_model('groupmamba-t_in1k')``, ``list_models('groupmamba*')``,
``inference_model``, ``ImageClassificationInferencer('groupmamba-t_in1k')``."""
import os.path as osp
import warnings
from typing import Tuple

PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))


def model_index_root() -> str:
    """The directory holding ``model-index.yml`` and the ``configs`` it names: the
    package's ``.mim`` (an installed wheel, or the links of an editable install), else
    the source tree the package was imported from."""
    for root in (osp.join(PACKAGE_DIR, '.mim'), osp.dirname(PACKAGE_DIR)):
        if osp.isfile(osp.join(root, 'model-index.yml')):
            return root
    raise FileNotFoundError(
        f'mmgroupmamba has no model-index.yml: neither {PACKAGE_DIR}/.mim (written by '
        'setup.py when the package is installed) nor the source tree above it has one.')


def model_index_path() -> Tuple[str, str]:
    """``(model-index.yml, directory its config paths are relative to)``."""
    root = model_index_root()
    return osp.join(root, 'model-index.yml'), root


def register_model_index() -> bool:
    """Register our models in mmpretrain's ``ModelHub`` (once; ``import mmgroupmamba``
    does it). Returns False when mmpretrain is not installed or the index is missing (a
    warning says so: the models still build from their configs)."""
    try:
        from mmpretrain.apis import ModelHub
    except ImportError:
        return False
    try:
        path, config_prefix = model_index_path()
    except FileNotFoundError as e:
        warnings.warn(f'{e} Models are not available by name in mmpretrain.')
        return False
    from modelindex.load_model_index import load
    names = [m.name.lower() for m in load(path).models]
    if all(ModelHub.has(name) for name in names):
        return True  # registered already (a re-import, or a second copy of the package)
    ModelHub.register_model_index(path, config_prefix=config_prefix)
    return True
