"""Datasets: upload an ImageFolder archive (validated as the engine validates it), list
them; each is then referenced as `dataset:<id>` in specs."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from ppr_engine.data import validate_archive
from ppr_engine.data.archive import ARCHIVE_SUFFIXES
from ppr_engine.errors import DatasetError

from ..deps import ArtifactsDep, Principal, SettingsDep, StoreDep
from ..errors import ApiError
from ..schemas import DatasetView, ErrorBody
from ..store.db import new_id
from ..uploads import read_form

router = APIRouter(tags=["datasets"])
MAX_NAME = 200  # the column holds 255
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 429,
                                                  503)}
UPLOAD = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["archive"], "properties": {
        "archive": {"type": "string", "format": "binary",
                    "description": ".tar, .tar.gz or .zip in ImageFolder layout "
                                   "([split/]class/image)"},
        "name": {"type": "string"}}}}}}}


@router.post("/datasets", status_code=201, response_model=DatasetView,
             operation_id="upload_dataset", openapi_extra=UPLOAD, responses=ERRORS)
async def upload_dataset(request: Request, principal: Principal, settings: SettingsDep,
                         store: StoreDep, artifacts: ArtifactsDep) -> DatasetView:
    """Upload a dataset archive; it is checked member by member before it is kept. Uploads
    share the submission rate limit, and a principal's datasets a storage quota."""
    request.app.state.submit_limiter.take(principal)
    used, quota = store.datasets.total_bytes(principal), settings.storage_quota_bytes
    room = quota - used
    if room <= 0:
        raise ApiError(413, f"storage quota reached: your datasets hold {used} bytes of your "
                       f"{quota} (PPR_STORAGE_QUOTA_BYTES); delete one to make room",
                       "quota_exceeded")
    limit = min(settings.max_dataset_bytes, room)
    form = await read_form(request, artifacts, "archive", limit, ("name",),
                           {"name": 4 * MAX_NAME},
                           over=None if limit == settings.max_dataset_bytes else (
                               f"of your storage quota ({quota} bytes, {used} used; "
                               "PPR_STORAGE_QUOTA_BYTES)"))
    upload = form.upload
    if upload is None or upload.size == 0:
        raise ApiError(422, "missing or empty file field 'archive'")
    given = form.fields.get("name")
    if given is not None and (not 1 <= len(given) <= MAX_NAME or not given.isprintable()):
        upload.abort()
        raise ApiError(422, f"name: a dataset name is 1 to {MAX_NAME} printable characters")
    name = Path(form.filename).name
    suffix = next((s for s in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True)
                   if name.lower().endswith(s)), None)
    if suffix is None:
        upload.abort()
        raise ApiError(415, f"{name or 'archive'}: expected a .tar, .tar.gz, .tgz or .zip file")
    staged = upload.path.with_name(upload.path.name + suffix)
    upload.path.rename(staged)
    upload.tmp = str(staged)
    try:
        files = await run_in_threadpool(validate_archive, staged, shown=name)
        if files == 0:
            raise DatasetError(f"archive {name} holds no files")
    except BaseException:
        upload.abort()
        raise
    dataset_id = new_id()
    key = f"datasets/{dataset_id}{suffix}"
    upload.commit(key)
    ds = store.datasets.add(id=dataset_id, principal=principal,
                           name=(given or name)[:MAX_NAME], key=key, sha256=upload.sha256,
                           size=upload.size, files=files)
    return DatasetView.of(ds)


@router.get("/datasets", response_model=list[DatasetView], operation_id="list_datasets",
            responses=ERRORS)
def list_datasets(principal: Principal, store: StoreDep) -> list[DatasetView]:
    """The caller's datasets."""
    return [DatasetView.of(d) for d in store.datasets.list(principal)]


@router.get("/datasets/{dataset_id}", response_model=DatasetView, operation_id="get_dataset",
            responses=ERRORS)
def get_dataset(dataset_id: str, principal: Principal, store: StoreDep) -> DatasetView:
    """One dataset."""
    ds = store.datasets.get(dataset_id, principal)
    if ds is None:
        raise ApiError(404, f"no dataset {dataset_id}", "not_found")
    return DatasetView.of(ds)


@router.delete("/datasets/{dataset_id}", status_code=204, operation_id="delete_dataset",
               responses=ERRORS | {409: {"model": ErrorBody}})
def delete_dataset(dataset_id: str, principal: Principal, store: StoreDep,
                   artifacts: ArtifactsDep) -> Response:
    """Delete one of the caller's datasets (409 while a queued or running job names it)."""
    if store.datasets.get(dataset_id, principal) is None:
        raise ApiError(404, f"no dataset {dataset_id}", "not_found")
    if store.datasets.in_use(dataset_id, principal):
        raise ApiError(409, f"dataset {dataset_id} is named by a queued or running job; "
                       "delete it once that job has finished", "in_use")
    ds = store.datasets.delete(dataset_id, principal)
    if ds is not None:
        artifacts.delete_prefix(ds.key)
    return Response(status_code=204)
