"""Export: a Keras/SavedModel (or ONNX) source -> fp32 bundles per format; the declared export steps and packaging."""
