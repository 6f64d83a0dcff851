"""Quantization per format (LiteRT, OpenVINO/NNCF, ONNX Runtime) within an accuracy budget; calibration data."""
