"""OpenAI's files and fine-tuning jobs endpoints: thin routers over jobs/service.py (mounted by app.py
when the server has a store). Paths, fields, pagination and errors as OpenAI's, so the official
`openai` client works with only its base_url changed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from tunesmith.errors import ApiError
from tunesmith.jobs import protocol as jp
from tunesmith.serve.service import Service


def add_jobs_routes(app: FastAPI, service: Service, auth: Callable[[Request], Awaitable[str]],
                    error: Callable[[ApiError], JSONResponse]) -> None:
    jobs = service.jobs
    assert jobs is not None

    def answer(result: BaseModel | dict[str, Any] | ApiError) -> Response:
        if isinstance(result, ApiError):
            return error(result)
        return JSONResponse(result.model_dump(mode="json") if isinstance(result, BaseModel) else result)

    # -- files -------------------------------------------------------------------------------------

    @app.post("/v1/files", tags=["files"], response_model=jp.FileObject)
    async def create_file(request: Request, owner: str = Depends(auth)) -> Response:
        # Only multipart, and its other fields small: Starlette keeps every non-file field (and a whole urlencoded
        # body) in memory, so a request up to the upload limit held ~500 MB of RAM; only the file part is spooled.
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "multipart/form-data":
            return error(ApiError(400, "send the file as multipart/form-data (the 'file' and 'purpose' fields)",
                                  param="file"))
        form = await request.form(max_files=1, max_fields=16, max_part_size=64 * 1024)
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            return error(ApiError(400, "'file' is required: a multipart file upload", param="file"))
        if not isinstance(purpose, str) or not purpose:
            return error(ApiError(400, "'purpose' is required (fine-tune)", param="purpose"))
        expires = None
        if "expires_after[anchor]" in form or "expires_after[seconds]" in form:
            seconds = str(form.get("expires_after[seconds]", ""))
            whole = seconds.isascii() and seconds.isdigit() and len(seconds) <= 12  # "³⁶⁰⁰" is isdigit() too: a 500
            expires = {"anchor": form.get("expires_after[anchor]"), "seconds": int(seconds) if whole else seconds}
        result = await _thread(jobs.create_file, owner, upload.filename or "upload", purpose, upload.file, expires)
        return answer(result)

    @app.get("/v1/files", tags=["files"], response_model=jp.IdPage[jp.FileObject])
    async def list_files(after: str | None = None, limit: int = 10_000, order: str = "desc", purpose: str | None = None,
                         owner: str = Depends(auth)) -> Response:
        return answer(await _thread(jobs.list_files, owner, after, limit, order, purpose))

    @app.get("/v1/files/{file_id}", tags=["files"], response_model=jp.FileObject)
    async def get_file(file_id: str, owner: str = Depends(auth)) -> Response:
        return answer(jobs.get_file(owner, file_id))

    @app.get("/v1/files/{file_id}/content", tags=["files"])
    async def file_content(file_id: str, owner: str = Depends(auth)) -> Response:
        path = jobs.file_content(owner, file_id)
        return error(path) if isinstance(path, ApiError) else FileResponse(path, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}", tags=["files"], response_model=jp.FileDeleted)
    async def delete_file(file_id: str, owner: str = Depends(auth)) -> Response:
        return answer(await _thread(jobs.delete_file, owner, file_id))

    # -- fine-tuning jobs --------------------------------------------------------------------------

    @app.post("/v1/fine_tuning/jobs", tags=["fine-tuning"], response_model=jp.FineTuningJob)
    async def create_job(req: jp.JobCreate, owner: str = Depends(auth)) -> Response:
        return answer(await _thread(jobs.create_job, owner, req))

    @app.get("/v1/fine_tuning/jobs", tags=["fine-tuning"], response_model=jp.Page[jp.FineTuningJob])
    async def list_jobs(request: Request, after: str | None = None, limit: int = 20, owner: str = Depends(auth)) -> Response:
        metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                    if k.startswith("metadata[") and k.endswith("]")}
        plain = request.query_params.get("metadata")  # OpenAI's `metadata=null`: the jobs without metadata
        if plain is not None and (plain != "null" or metadata):
            return error(ApiError(400, "metadata: filter with metadata[KEY]=VALUE, or metadata=null for the jobs "
                                       "without metadata; not both", param="metadata", code="invalid_value"))
        return answer(jobs.list_jobs(owner, after, limit, metadata or None, without_metadata=plain == "null"))

    @app.get("/v1/fine_tuning/jobs/{job_id}", tags=["fine-tuning"], response_model=jp.FineTuningJob)
    async def get_job(job_id: str, owner: str = Depends(auth)) -> Response:
        return answer(jobs.get_job(owner, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel", tags=["fine-tuning"], response_model=jp.FineTuningJob)
    async def cancel_job(job_id: str, owner: str = Depends(auth)) -> Response:
        return answer(await _thread(jobs.cancel_job, owner, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause", tags=["fine-tuning"], response_model=jp.FineTuningJob)
    async def pause_job(job_id: str, owner: str = Depends(auth)) -> Response:
        return answer(await _thread(jobs.pause_job, owner, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume", tags=["fine-tuning"], response_model=jp.FineTuningJob)
    async def resume_job(job_id: str, owner: str = Depends(auth)) -> Response:
        return answer(await _thread(jobs.resume_job, owner, job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events", tags=["fine-tuning"], response_model=jp.Page[jp.FineTuningJobEvent])
    async def list_events(job_id: str, after: str | None = None, limit: int = 20, owner: str = Depends(auth)) -> Response:
        return answer(jobs.list_events(owner, job_id, after, limit))

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", tags=["fine-tuning"],
             response_model=jp.IdPage[jp.FineTuningJobCheckpoint])
    async def list_checkpoints(job_id: str, after: str | None = None, limit: int = 10, owner: str = Depends(auth)) -> Response:
        return answer(jobs.list_checkpoints(owner, job_id, after, limit))

    @app.delete("/v1/models/{model_id:path}", tags=["openai"])
    async def delete_model(model_id: str, owner: str = Depends(auth)) -> Response:
        result = await _thread(jobs.delete_model, owner, model_id)
        if not isinstance(result, ApiError):
            # its checkpoints (`NAME:ckpt-step-N`) go with it, also those loaded by an earlier request
            for name in {m.id for m in service.models if m.id == model_id or m.id.startswith(f"{model_id}:ckpt-step-")}:
                service.unload(name, owner)
        return answer(result)


async def _thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Store and disk work off the event loop (an upload streams to disk, a commit may wait for a lock: a worker's
    on the job being cancelled held the whole server for as long)."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
