"""One module per family of tasks: how an example is encoded, the loss, and the training-time metrics."""
