# The student of groupmamba-demo_distill_shapes.py trained without a teacher (same data,
# schedule and seed): both heads learn the labels. The baseline of the distillation demo.
_base_ = ['./groupmamba-demo_distill_shapes.py']

model = dict(
    head=dict(distill_type='none'),
    # ignored (never built) without distillation; removed to make that explicit
    teacher=None,
    teacher_checkpoint=None)
