"""The model registry: run folders registered as numbered versions of a named model, each a candidate,
in production (one at a time) or archived; promotion and rollback are recorded, and `tunesmith serve
--model NAME` follows whatever is in production. Lives in the store (store/schema.py)."""
