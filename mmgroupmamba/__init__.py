"""GroupMamba for OpenMMLab: importing this package registers its modules in MMEngine's
root registries, so ``dict(type='GroupMamba')`` builds from mmpretrain, mmdet and mmseg."""
from .utils.compat import apply_compat_patches
from .version import __version__

apply_compat_patches()

from . import engine, models  # noqa: E402,F401  (registers the modules)
from .apis import register_model_index  # noqa: E402
from .models import GroupMamba  # noqa: E402

# our models by name in mmpretrain (get_model('groupmamba-t_in1k'), list_models, ...)
register_model_index()

__all__ = ['GroupMamba', '__version__']
