from .graphed_inference import GraphedInference
from .graphed_training import GraphedTraining

__all__ = ['GraphedInference', 'GraphedTraining']
