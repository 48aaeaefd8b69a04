"""A public dataset from the Hugging Face Hub, by name: downloaded when online, else read from the cache.

`datasets.load_dataset` does the finding: the Hub when it can be reached, the local cache
(~/.cache/huggingface, or HF_HOME) when it cannot, or a local folder of data files when `dataset`
is a path. When none of these has the dataset, the error says so and lists the ways forward for an
offline machine, instead of the library's connection traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tunesmith.collect.sink import Sink
from tunesmith.config import HubSpec, ProjectConfig, SourceSpec
from tunesmith.data.sources import dataset_rows
from tunesmith.errors import DataError

BATCH = 4096  # rows per Arrow batch read from the dataset: fast, and bounded memory for big datasets


def collect(cfg: ProjectConfig, index: int, spec: SourceSpec, sink: Sink, say: Callable[[str], None]) -> None:
    assert spec.hub is not None
    hub = spec.hub
    say(f"loading {_name(hub)} (the Hub when reachable, else the local cache)")
    ds = load(hub)
    origin = f"hf://{hub.dataset}/{hub.config or 'default'}/{hub.split}@{hub.revision or 'main'}"
    row = 0
    for record in dataset_rows(ds, BATCH):
        sink.add(record, origin=origin, row=row)  # 0-based: ds[row] is this row
        row += 1
    say(f"{row} rows from {_name(hub)}")


def load(hub: HubSpec) -> Any:
    """The split as a `datasets.Dataset`, or a DataError that says why not and what to do."""
    from datasets.exceptions import DatasetNotFoundError, DatasetsError

    import datasets

    try:
        return datasets.load_dataset(hub.dataset, hub.config, split=hub.split, revision=hub.revision)
    except ConnectionError as err:  # offline mode, no route to the Hub, DNS failure, timeout: all land here
        raise DataError(offline_message(hub, err)) from None
    except DatasetNotFoundError as err:
        raise DataError(
            f"Hugging Face dataset '{hub.dataset}' was not found: {err} Check the name on https://huggingface.co/datasets "
            "(it is `owner/name`); a private or gated dataset needs `huggingface-cli login` first"
        ) from None
    except ValueError as err:  # an unknown config or split: the library's message lists the ones that exist
        raise DataError(f"Hugging Face dataset {_name(hub)}: {err}") from None
    except (FileNotFoundError, DatasetsError) as err:
        raise DataError(f"Hugging Face dataset {_name(hub)} could not be loaded: {err}") from None


def offline_message(hub: HubSpec, err: BaseException) -> str:
    why = ("offline mode is on (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set)" if _offline_env()
           else f"the Hugging Face Hub could not be reached ({err})")
    return (
        f"Hugging Face dataset {_name(hub)} is neither reachable nor in the local cache: {why}. On a machine "
        "without internet, either: (1) load it once on a machine with internet (e.g. `tunesmith collect` there) and "
        "copy its ~/.cache/huggingface folder (or $HF_HOME) to this one; (2) there, save it with "
        "`datasets.load_dataset(...).save_to_disk(DIR)`, copy DIR here and use a source with `kind: hf_disk` and "
        "`path: DIR`; or (3) use a packaged dataset instead (`tunesmith data packaged` lists them)"
    )


def _offline_env() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _name(hub: HubSpec) -> str:
    return f"'{hub.dataset}'" + (f" (config '{hub.config}')" if hub.config else "") + f" [split '{hub.split}']" + (
        f" @ {hub.revision}" if hub.revision else "")
