"""Models: the registry (``create_model``), every backbone, and the :class:`SoundClassifier`."""

# Importing a model's module registers it.
from escnet.models import ast, cnn, crnn, kumar, lstm, mobilenet, report_cnns, vgg  # noqa: F401
from escnet.models.classifier import SoundClassifier
from escnet.models.registry import (
    count_macs,
    count_parameters,
    create_model,
    list_models,
    model_arguments,
    register_model,
    resolve_args,
)

__all__ = ["SoundClassifier", "count_macs", "count_parameters", "create_model", "list_models",
           "model_arguments", "register_model", "resolve_args"]
