"""What builds a model: the registry, classical pipelines, networks and their backbones, the image
preprocessing (and stain normalisation) they share, and a torch module's ONNX export. Saving,
loading and running a trained model is ``leukoscope.bundle``."""
