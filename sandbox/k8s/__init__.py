"""A real Kubernetes control plane for the sandbox: etcd, kube-apiserver, controller-manager, scheduler (built
from Debian's source package, see build.sh) and a simulated node agent in Python that stands in for kubelet."""
