# GroupMamba-S on ImageNet-1K: the recipe of groupmamba-t_8xb128_in1k.py (see there for
# the train / test commands) with the small architecture.
_base_ = ['./groupmamba-t_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='small'),
    head=dict(in_channels=512, mlp_ratio=4))
