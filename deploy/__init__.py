"""Deployments beyond one machine (deploy/kubernetes/)."""
