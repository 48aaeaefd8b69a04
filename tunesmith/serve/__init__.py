"""Serving run folders over HTTP (imports no training code): protocol, models, batching, service, app."""
