"""fastcifar: the CIFAR ResNets of He et al. 2016, trained fast, with every second accounted for."""

__version__ = "0.1.0"
