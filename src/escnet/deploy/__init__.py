"""Deployment: classify new audio with a trained model, export it to ONNX.

:mod:`~escnet.deploy.predict`, :mod:`~escnet.deploy.onnx_model` and
:mod:`~escnet.deploy.timeline` need no PyTorch; :mod:`~escnet.deploy.torch_model` and
:mod:`~escnet.deploy.export` do.
"""
