"""escnet: environmental sound classification on ESC-50 and your own recordings."""

from escnet.config import TaskConfig, load_config
from escnet.errors import EscnetError
from escnet.models import SoundClassifier, create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "EscnetError",
    "SoundClassifier",
    "TaskConfig",
    "__version__",
    "create_model",
    "list_models",
    "load_config",
]
