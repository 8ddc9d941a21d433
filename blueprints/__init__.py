"""One module per feature, each exposing `bp`."""
