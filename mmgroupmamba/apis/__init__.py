"""Entry points for users of the package beyond the configs: the model index (models by
name in mmpretrain) and the backbone of a config on its own."""
from .backbone import backbone_from_config
from .model_index import model_index_path, model_index_root, register_model_index

__all__ = ['backbone_from_config', 'model_index_path', 'model_index_root',
           'register_model_index']
