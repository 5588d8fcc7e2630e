"""Plain torch/ONNX code for the model pipeline: no ZenML, no MLflow, unit-testable without a stack."""
