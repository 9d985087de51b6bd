"""The real-API-server tier (marker ``k8s``): kube-apiserver v1.28 and etcd on loopback, see conftest.py."""
