from .groupmamba_cls_head import GroupMambaClsHead

__all__ = ['GroupMambaClsHead']
