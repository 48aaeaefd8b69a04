"""The labelling web app: the page (annotate_page) and thin JSON routes over the queue (annotate.Queue).

    GET  /                  the page
    GET  /api/task          name, labels, instructions, overlap
    GET  /api/next          ?annotator=ID -> {item, progress}: their next item (null when none is left)
    POST /api/label         {annotator, item_id, label} -> {saved, item (the next one), progress}
    POST /api/skip          {annotator, item_id} -> the same
    POST /api/undo          {annotator} -> {undone (the item again, with the label removed), progress}
    GET  /api/progress      ?annotator=ID

Bad input (unknown label or item, empty annotator id) answers 400 with {"error": message}; an answer the
store refuses as it changed underneath (the item deleted meanwhile) 409, also as JSON. Routes are
plain `def`: FastAPI runs them in its thread pool, as the store's calls block.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from tunesmith.collect.annotate import Queue
from tunesmith.collect.annotate_page import PAGE
from tunesmith.errors import TunesmithError


class Answer(BaseModel):
    annotator: str
    item_id: str
    label: str | None = None


class Who(BaseModel):
    annotator: str


def create_app(queue: Queue) -> FastAPI:
    app = FastAPI(title=f"tunesmith annotate: {queue.task.name}", docs_url=None, redoc_url=None)

    @app.exception_handler(TunesmithError)
    def _bad_input(_: Request, err: TunesmithError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=400)

    @app.exception_handler(IntegrityError)
    def _conflict(_: Request, err: IntegrityError) -> JSONResponse:
        # a text/plain 500 left the page with a JSON parse error and no word that the answer was not saved
        return JSONResponse({"error": "the answer was not saved: the store refused it as it changed meanwhile "
                                      f"({type(err.orig).__name__}); reload the page and answer again"}, status_code=409)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/task")
    def task() -> dict[str, Any]:
        t = queue.task
        return {"name": t.name, "labels": t.labels, "instructions": t.instructions, "overlap": t.overlap}

    @app.get("/api/next")
    def next_item(annotator: str) -> dict[str, Any]:
        return {"item": queue.next(annotator), "progress": queue.progress(annotator)}

    @app.post("/api/label")
    def label(body: Answer) -> dict[str, Any]:
        saved = queue.label(body.annotator, body.item_id, body.label or "")
        return {"saved": saved, "item": queue.next(body.annotator), "progress": queue.progress(body.annotator)}

    @app.post("/api/skip")
    def skip(body: Answer) -> dict[str, Any]:
        saved = queue.skip(body.annotator, body.item_id)
        return {"saved": saved, "item": queue.next(body.annotator), "progress": queue.progress(body.annotator)}

    @app.post("/api/undo")
    def undo(body: Who) -> dict[str, Any]:
        return {"undone": queue.undo(body.annotator), "progress": queue.progress(body.annotator)}

    @app.get("/api/progress")
    def progress(annotator: str | None = None) -> dict[str, Any]:
        return queue.progress(annotator)

    return app


def serve(queue: Queue, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the page until Ctrl-C (labels are already in the store; nothing to save on the way out)."""
    import uvicorn

    uvicorn.run(create_app(queue), host=host, port=port, log_level="warning")
