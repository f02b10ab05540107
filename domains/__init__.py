"""Abstract domains over the network IR: pure torch, batched, device-agnostic.

This package imports nothing else of the project.
"""
