from .backbones import GroupMamba  # noqa: F401
from .layers import *  # noqa: F401,F403
from .teachers import TimmRegNet  # noqa: F401

try:  # the classification head builds on mmpretrain; the backbone does not need it
    from .heads import GroupMambaClsHead  # noqa: F401
    from .classifiers import DistillImageClassifier  # noqa: F401
except ImportError as e:  # pragma: no cover
    if 'mmpretrain' not in str(e):
        raise
