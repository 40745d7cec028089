"""Serving a saved model (.joblib) or an exported one (.onnx) over HTTP: `cnnfeat serve`.
Needs the `[serve]` extra (FastAPI, uvicorn, python-multipart)."""
