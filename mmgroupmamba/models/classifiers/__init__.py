from .distill_classifier import (DistillImageClassifier, TeacherCheckpointError,
                                 load_teacher_checkpoint)

__all__ = ['DistillImageClassifier', 'TeacherCheckpointError', 'load_teacher_checkpoint']
