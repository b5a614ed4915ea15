"""Network training: ``loop.train`` / ``loop.cross_validate``, ``config.TrainConfig``, augmentation, stain.

Submodules import torch; import them where they are needed so the CLI starts fast.
"""
