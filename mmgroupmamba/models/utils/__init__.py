from .compiled_forward import CompiledForward
from .graphed_inference import GraphedInference
from .graphed_training import GraphedTraining

__all__ = ['CompiledForward', 'GraphedInference', 'GraphedTraining']
