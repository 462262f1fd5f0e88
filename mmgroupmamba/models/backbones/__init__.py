from .groupmamba import GroupMamba

__all__ = ['GroupMamba']
