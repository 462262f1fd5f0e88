from .graphed_inference import GraphedInference

__all__ = ['GraphedInference']
