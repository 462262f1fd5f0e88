"""How a model's forward is launched, beside the model: eagerly, as replayed CUDA graphs
(:class:`GraphedInference`, :class:`GraphedTraining`) or compiled
(:class:`CompiledForward`), as its execution policy says (:func:`execute`)."""
from .compiled_forward import CompiledForward
from .executor import execute, runners, signature
from .graphed_inference import GraphedInference
from .graphed_training import GraphedTraining

__all__ = ['execute', 'runners', 'signature', 'CompiledForward', 'GraphedInference',
           'GraphedTraining']
