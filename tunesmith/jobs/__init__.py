"""The OpenAI-compatible fine-tuning API: files, jobs, events, checkpoints, `ft:` models.

    protocol.py   OpenAI's objects and requests (the `openai` package's types are the reference)
    validate.py   a training file checked as OpenAI checks it (its error codes, the line at fault)
    service.py    files and jobs over the store: values or ApiError, no HTTP (serve/ mounts it)
    worker.py     claims queued jobs, trains them with the same code as `tunesmith train`, reports
                  events and checkpoints; heartbeats, cancel, pause, resume after a crash

serve/ imports protocol and service only: the training side (worker, validate) never loads in the server.
"""
