"""Collecting rows from where they live into JSONL files that `data prepare` reads like any other
source: web pages, REST APIs, survey exports, Hugging Face Hub datasets and synthetic data; and
labelling what arrives unlabelled (annotation).

One module per source kind; `sink` is the contract they all write through (records with provenance,
a per-item failure list, atomic publication), `run` picks the module for a source.
"""
