"""Deployment: classify new audio with a trained model."""
