"""Stripe's wire format: nested form decoding, typed parameter readers, list pages, expansion."""

from __future__ import annotations

import email.parser
import email.policy
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.sandbox.errors import StripeError, invalid_param, missing_param

if TYPE_CHECKING:
    from engine.sandbox.state import SandboxState

Obj = dict[str, Any]
"""A Stripe JSON object as the sandbox stores and returns it."""

Params = dict[str, Any]
"""Decoded request parameters: nested dicts, lists and string leaves."""

# Keys whose children are free-form user keys: never turned into lists.
_FREE_FORM = frozenset({"metadata"})


def parse_form(raw: str) -> Params:
    """Decode `a[b][0]=x&c[]=y` into nested dicts and lists, as Stripe does."""
    out: Params = {}
    if not raw:
        return out
    for key, value in urllib.parse.parse_qsl(raw, keep_blank_values=True):
        _assign(out, _split_key(key), value)
    result: Params = _listify(out, "")
    return result


@dataclass(frozen=True, slots=True)
class Upload:
    """The file part of a multipart request (`POST /v1/files`)."""

    filename: str
    content: bytes


def parse_multipart(body: bytes, content_type: str) -> Params:
    """Decode `multipart/form-data` as the SDK sends a file upload: fields and one file."""
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    out: Params = {}
    if not message.is_multipart():
        return out
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            out[name] = Upload(filename, content)
        else:
            _assign(out, _split_key(name), content.decode("utf-8"))
    result: Params = _listify(out, "")
    return result


def _split_key(key: str) -> list[str]:
    head, sep, rest = key.partition("[")
    if not sep:
        return [key]
    parts = [head]
    for piece in ("[" + rest).split("["):
        if piece:
            parts.append(piece[:-1] if piece.endswith("]") else piece)
    return parts


def _assign(container: Params, parts: list[str], value: str) -> None:
    node = container
    for i, part in enumerate(parts):
        name = str(len(node)) if part == "" else part
        if i == len(parts) - 1:
            node[name] = value
            return
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child


def _listify(node: Params, name: str) -> Any:
    for key, value in node.items():
        if isinstance(value, dict):
            node[key] = _listify(value, key)
    if name not in _FREE_FORM and node and all(k.isdigit() for k in node):
        return [node[k] for k in sorted(node, key=int)]
    return node


def flatten_keys(params: Params, prefix: str = "") -> Iterator[str]:
    """Every parameter name in bracket form, e.g. `transfer_data[destination]`."""
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else key
        yield name
        if isinstance(value, dict):
            yield from flatten_keys(value, name)


def to_bool(value: Any, param: str) -> bool:
    """Stripe's booleans arrive as the strings `true`/`false`."""
    if isinstance(value, bool):
        return value
    if value in ("true", "True", "1"):
        return True
    if value in ("false", "False", "0", ""):
        return False
    raise invalid_param(f"Invalid boolean: {value}", param, "parameter_invalid_boolean")


def to_int(value: Any, param: str) -> int:
    """Parse an integer parameter or raise Stripe's `parameter_invalid_integer`."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise invalid_param(
            f"Invalid integer: {value}", param, "parameter_invalid_integer"
        ) from None


@dataclass(slots=True)
class Call:
    """One API request as a handler sees it."""

    state: SandboxState
    method: str
    path: str
    account: str
    """The account the request acts as: the `Stripe-Account` header or the platform."""
    params: Params
    args: tuple[str, ...] = ()
    """The `{id}` segments matched by the route, in order."""
    base_url: str = ""
    request_id: str = ""
    idempotency_key: str | None = None
    connected: bool = False
    """True when a `Stripe-Account` header selected a connected account."""
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def platform(self) -> str:
        """The platform account id."""
        return self.state.platform_id

    def has(self, name: str) -> bool:
        return name in self.params

    def str_(self, name: str, default: str | None = None) -> str | None:
        value = self.params.get(name, default)
        if value is None or isinstance(value, str):
            return value
        raise invalid_param(f"Invalid string: {name}", name, "parameter_invalid_string")

    def req_str(self, name: str) -> str:
        value = self.str_(name)
        if not value:
            raise missing_param(name)
        return value

    def int_(self, name: str) -> int | None:
        value = self.params.get(name)
        if value is None or value == "":
            return None
        return to_int(value, name)

    def req_int(self, name: str) -> int:
        value = self.int_(name)
        if value is None:
            raise missing_param(name)
        return value

    def bool_(self, name: str, default: bool = False) -> bool:
        value = self.params.get(name)
        if value is None:
            return default
        return to_bool(value, name)

    def dict_(self, name: str) -> Params:
        value = self.params.get(name)
        if value is None or value == "":
            return {}
        if isinstance(value, dict):
            return value
        raise invalid_param(f"Invalid hash: {name}", name, "parameter_invalid_hash")

    def list_(self, name: str) -> list[Any]:
        value = self.params.get(name)
        if value is None or value == "":
            return []
        if isinstance(value, list):
            return value
        if isinstance(value, dict):
            return list(value.values())
        return [value]

    def metadata(self, current: Obj | None = None) -> Obj:
        """Apply Stripe's metadata semantics: merge, empty value unsets, `""` clears."""
        raw = self.params.get("metadata")
        result: Obj = dict(current or {})
        if raw is None:
            return result
        if raw == "":
            return {}
        if not isinstance(raw, dict):
            raise invalid_param("Invalid hash: metadata", "metadata", "parameter_invalid_hash")
        for key, value in raw.items():
            if value == "":
                result.pop(key, None)
            else:
                result[key] = value
        return result


def page(
    call: Call,
    ids_oldest_first: Sequence[str],
    url: str,
    *,
    keep: Any = None,
    position: dict[str, int] | None = None,
) -> Obj:
    """A Stripe list object over ids (stored oldest first, served newest first).

    `keep(obj) -> bool` filters; `position` maps id -> index in `ids_oldest_first` so
    `starting_after`/`ending_before` cost O(1) to locate.
    """
    objects = call.state.objects
    limit = call.int_("limit")
    limit = 10 if limit is None else limit
    if not 1 <= limit <= 100:
        raise invalid_param(
            "This value must be greater than or equal to 1 and less than or equal to 100.",
            "limit",
        )
    after = call.str_("starting_after")
    before = call.str_("ending_before")
    pos = position if position is not None else None

    def index_of(object_id: str, param: str) -> int:
        if pos is not None and object_id in pos and pos[object_id] < len(ids_oldest_first):
            i = pos[object_id]
            if ids_oldest_first[i] == object_id:
                return i
        try:
            return list(ids_oldest_first).index(object_id)
        except ValueError:
            raise StripeError(
                400,
                f"No such object: '{object_id}'",
                code="resource_missing",
                param=param,
            ) from None

    def candidates(indexes: Iterable[int]) -> Iterator[Obj]:
        for i in indexes:
            obj = objects.get(ids_oldest_first[i])
            if obj is None or (keep is not None and not keep(obj)):
                continue
            yield obj

    data: list[Obj] = []
    has_more = False
    if before is not None:
        start = index_of(before, "ending_before")
        for obj in candidates(range(start + 1, len(ids_oldest_first))):
            if len(data) == limit:
                has_more = True
                break
            data.append(obj)
        data.reverse()
    else:
        start = index_of(after, "starting_after") if after is not None else len(ids_oldest_first)
        for obj in candidates(range(start - 1, -1, -1)):
            if len(data) == limit:
                has_more = True
                break
            data.append(obj)
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def embedded_list(items: list[Obj], url: str) -> Obj:
    """The small list objects Stripe embeds (e.g. `charge.refunds`), newest first."""
    return {"object": "list", "data": items, "has_more": False, "url": url}


def expand(state: SandboxState, obj: Obj, paths: Sequence[str]) -> Obj:
    """Replace id strings on the given dotted paths by the objects they name."""
    result = obj
    for path in paths:
        result = _expand_path(state, result, path.split("."), path)
    return result


def _expand_path(state: SandboxState, node: Obj, parts: list[str], whole: str) -> Obj:
    key, rest = parts[0], parts[1:]
    if key == "data" and node.get("object") == "list" and rest:
        out = dict(node)
        out["data"] = [_expand_path(state, item, rest, whole) for item in node["data"]]
        return out
    include = state.includables.get((str(node.get("object")), key))
    if key in node:
        value = node[key]
    elif include is not None:
        value = include(state, node)
    else:
        raise invalid_param(
            f"This property cannot be expanded ({whole}).", "expand", "parameter_invalid"
        )
    if isinstance(value, str):
        target = state.objects.get(value)
        if target is None:
            return node
        value = target
    if rest and isinstance(value, dict):
        value = _expand_path(state, value, rest, whole)
    out = dict(node)
    out[key] = value
    return out
