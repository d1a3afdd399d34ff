"""The real-cluster end-to-end run behind `make e2e`: a single-node Kubernetes cluster on this machine
(cluster.py), the images built with buildah (images.py, scripts/images.py), and the scenarios that run a round
and a campaign in real pods (scenarios/, driven by run.py)."""
