"""The demo model's tooling: Fashion-MNIST data, its classifier, training and evaluation."""
