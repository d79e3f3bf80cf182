"""File uploads (`/v1/files`, multipart, Stripe's `files` base address) and their contents.

Stripe tells a file's type from its bytes; so does the sandbox (PDF, PNG, JPEG, else
the filename's extension). Dispute evidence must be a PDF, JPEG or PNG and identity
documents a PDF, JPEG or PNG, as Stripe requires; other purposes take any type.
`GET /v1/files/{id}/contents` serves the bytes back (what the file's `url` names).
"""

from __future__ import annotations

from engine.sandbox.errors import invalid, missing_param
from engine.sandbox.objects import build, new_id
from engine.sandbox.routing import Route
from engine.sandbox.state import SandboxState
from engine.sandbox.wire import Call, Obj, Upload, embedded_list, page

MAX_BYTES = 32 * 1024 * 1024
"""Stripe's upload limit."""
PURPOSES = frozenset(
    {
        "account_requirement",
        "additional_verification",
        "business_icon",
        "business_logo",
        "customer_signature",
        "dispute_evidence",
        "identity_document",
        "pci_document",
        "tax_document_user_upload",
    }
)
_DOCUMENT_TYPES = {
    "dispute_evidence": ("pdf", "jpg", "png"),
    "identity_document": ("pdf", "jpg", "png"),
    "additional_verification": ("pdf", "jpg", "png"),
}
_MAGIC = ((b"%PDF-", "pdf"), (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"))


def file_type(upload: Upload) -> str:
    """The type Stripe would report: from the bytes, else the filename's extension."""
    for magic, kind in _MAGIC:
        if upload.content.startswith(magic):
            return kind
    _, dot, extension = upload.filename.rpartition(".")
    return extension.lower() if dot and extension else "txt"


def create_file(call: Call) -> Obj:
    state = call.state
    purpose = call.req_str("purpose")
    if purpose not in PURPOSES:
        raise invalid(f"Invalid purpose: {purpose}", param="purpose")
    upload = call.params.get("file")
    if not isinstance(upload, Upload):
        raise missing_param("file")
    if len(upload.content) > MAX_BYTES:
        raise invalid("The file is larger than 32 MB.", param="file", code="file_too_large")
    kind = file_type(upload)
    allowed = _DOCUMENT_TYPES.get(purpose)
    if allowed is not None and kind not in allowed:
        raise invalid(
            f"Files with purpose {purpose} must be of type PDF, JPEG or PNG; this one is {kind}.",
            param="file",
            code="file_type_invalid",
        )
    file_id = new_id("file")
    base = call.base_url or state.base_url
    now = state.now()
    obj = build(
        "file",
        file_id,
        now,
        expires_at=None,
        filename=upload.filename,
        links=embedded_list([], f"/v1/file_links?file={file_id}"),
        purpose=purpose,
        size=len(upload.content),
        title=None,
        type=kind,
        url=f"{base}/v1/files/{file_id}/contents",
    )
    state.put(obj, call.account, "file")
    state.private(file_id)["content"] = upload.content
    return obj


def retrieve_file(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "file")


def list_files(call: Call) -> Obj:
    purpose = call.str_("purpose")
    return page(
        call,
        call.state.listed(call.account, "file"),
        "/v1/files",
        keep=None if purpose is None else lambda f: f["purpose"] == purpose,
        position=call.state.store.position,
    )


def file_contents(state: SandboxState, account: str, file_id: str) -> tuple[bytes, str]:
    """The bytes of an uploaded file this account may read, and their content type."""
    obj = state.get(file_id, account, "file")
    content: bytes = state.private(file_id).get("content", b"")
    types = {"pdf": "application/pdf", "png": "image/png", "jpg": "image/jpeg"}
    return content, types.get(obj["type"], "application/octet-stream")


def require_file(
    call: Call, file_id: str, purposes: tuple[str, ...], param: str, owners: tuple[str, ...] = ()
) -> Obj:
    """A file of the caller (or of `owners`) with one of `purposes` (what Stripe checks)."""
    obj = call.state.find(file_id)
    if (
        obj is None
        or call.state.store.kind.get(file_id) != "file"
        or call.state.owner_of(file_id) not in (call.account, *owners)
    ):
        raise invalid(f"No such file upload: '{file_id}'", param=param, code="resource_missing")
    if obj["purpose"] not in purposes:
        raise invalid(
            f"The file {file_id} was uploaded with purpose {obj['purpose']}; "
            f"{param} needs one of: {', '.join(purposes)}.",
            param=param,
        )
    return obj


ROUTES = (
    Route("POST", "/v1/files", create_file, "FileCreateParams"),
    Route("GET", "/v1/files", list_files, "FileListParams"),
    Route("GET", "/v1/files/{}", retrieve_file, "FileRetrieveParams"),
)
