from .synthetic_classification import SHAPE_CLASSES, generate_classification_set

__all__ = ['SHAPE_CLASSES', 'generate_classification_set']
