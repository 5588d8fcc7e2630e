"""The MLflow model registry: the only package that imports mlflow.

``registry.store`` registers versions with metrics, lineage and aliases; ``registry.cli`` is the
``edgefleet models`` group that ML engineers use to compare, promote and roll back.
"""
