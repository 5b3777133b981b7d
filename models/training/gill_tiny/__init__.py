"""Training code for the tiny GILL bundle: frozen stand-in backbones, the GILL stage, ONNX export."""
