"""ONNX-level passes that run before the Relax frontend: static shapes, folding, op rewrites."""
