"""A Google Cloud Storage emulator on 127.0.0.1 for the bucket tests: gcp-storage-emulator, with the object
preconditions it lacks and that tensorstore's OCDBT (orbax's checkpoint format) relies on for its atomic
manifest updates: ifGenerationMatch / ifGenerationNotMatch on reads and uploads, and the generation in
the `x-goog-generation` header of a download.

    python tests/gcs_emulator.py PORT BUCKET   # serves until killed, in memory
"""
import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket: str, name: str):
    try:
        return storage.get_file_obj(bucket, name)["generation"]
    except NotFound:
        return None


def _failed_precondition(request, storage, bucket: str, name: str):
    """The status a request's unmet generation precondition answers with, else None."""
    current = _generation(storage, bucket, name)
    match = request.query.get("ifGenerationMatch", [None])[0]
    if match is not None and (current or "0") != match:
        return HTTPStatus.PRECONDITION_FAILED
    not_match = request.query.get("ifGenerationNotMatch", [None])[0]
    if not_match is not None and current == not_match:
        return HTTPStatus.NOT_MODIFIED
    return None


def _reading(handler):
    def wrapped(request, response, storage, *args, **kwargs):
        bucket, name = request.params["bucket_name"], request.params["object_id"]
        failed = _failed_precondition(request, storage, bucket, name)
        if failed is not None:
            response.status = failed
            return
        generation = _generation(storage, bucket, name)
        if generation is not None:
            response["x-goog-generation"] = generation
        return handler(request, response, storage, *args, **kwargs)
    return wrapped


def _uploading(handler):
    def wrapped(request, response, storage, *args, **kwargs):
        name = request.query.get("name", [None])[0]
        if name is not None:
            failed = _failed_precondition(request, storage, request.params["bucket_name"], name)
            if failed is not None:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return
        return handler(request, response, storage, *args, **kwargs)
    return wrapped


# Before the server module builds its routing table from these functions.
objects.download = _reading(objects.download)
objects.get = _reading(objects.get)
objects.insert = _uploading(objects.insert)

if __name__ == "__main__":
    from gcp_storage_emulator.server import create_server
    create_server("127.0.0.1", int(sys.argv[1]), in_memory=True, default_bucket=sys.argv[2]).run()
