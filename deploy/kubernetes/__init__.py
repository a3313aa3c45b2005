"""The stack on Kubernetes: a kustomization fed from `.env` and the repository's own config files
(generate.py writes what kustomize cannot read itself), and Argo CD Applications for the charts."""
