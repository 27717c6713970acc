"""Conversion and optimization: saved models to ONNX model folders, and ONNX to faster ONNX.

Needs the ``convert`` extra (scikit-learn, skl2onnx, onnxmltools, XGBoost, LightGBM,
skops, pyarrow); PyTorch is installed apart (``pip install torch==2.13.0``). The server
never imports this package.
"""
