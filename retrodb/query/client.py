"""The wire format of `retrodb serve` (request bodies, limits, errors) and a client.

    client = RemoteRetriever("http://127.0.0.1:8000", token=None)
    client.search(["some text"], k=4)          # like retrodb.open(DB).search, as dicts
    client.neighbours(chunk_ids=[3, 7], k=2)   # ids, blocks [N, F], mask, as arrays
    client.neighbours(tokens=[[101, 2023, ...]], k=2, exclude_overlap=0.2)

Transport failures (a worker restarted, a connection reset) are retried; an answer of
the service that refuses a request raises RetrodbError with its message.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..core.errors import RetrodbError

MAX_BODY = 1 << 20  # bytes of a request body
MAX_K = 100
MAX_TEXT = 20_000  # characters of one text
MAX_ITEMS = 512  # texts, chunk ids or token queries of one request

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class QueryRequest(Body):
    texts: list[Text] = Field(min_length=1, max_length=MAX_ITEMS, description=(
        f"Texts to search for (≤ {MAX_TEXT} characters each)."))
    k: int = Field(4, ge=1, le=MAX_K, description="Hits per text.")


class NeighboursRequest(Body):
    chunk_ids: Optional[list[int]] = Field(None, min_length=1, max_length=MAX_ITEMS,
                                           description="Query chunks of the database, "
                                           "searched with their stored keys.")
    tokens: Optional[list[list[int]]] = Field(
        None, min_length=1, max_length=MAX_ITEMS, description="Query chunks as token "
        "ids of the database's tokenizer (1 to chunk size each), decoded and embedded.")
    k: int = Field(2, ge=1, le=MAX_K)
    exclude_same_doc: Optional[bool] = Field(None, description=(
        "No neighbour from the query chunk's own document [default: true with "
        "chunk_ids; not allowed with tokens]."))
    exclude_validation: bool = Field(True, description=(
        "No neighbour from a validation document of the database's split."))
    exclude_overlap: Optional[float] = Field(None, ge=0, le=1, description=(
        "α: drop neighbours whose longest common token run with the query, over the "
        "chunk size, exceeds α."))


class RemoteRetriever:
    """A `retrodb serve` service, called like the in-process retriever."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 60.0,
                 retries: int = 2):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url, self.retries = url.rstrip("/"), retries
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "RemoteRetriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        import httpx

        for attempt in range(self.retries + 1):
            try:
                r = self.http.request(method, path, json=body)
                break
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as e:
                if attempt == self.retries:
                    raise RetrodbError(f"{self.url}{path}: {e.__class__.__name__}: {e}"
                                       ) from None
                time.sleep(0.2 * (attempt + 1))
        if r.status_code != 200:
            try:
                msg = r.json().get("error") or r.text
            except ValueError:
                msg = r.text
            raise RetrodbError(f"{self.url}{path}: {r.status_code} {msg}")
        return r.json()

    def health(self) -> dict:
        return self._call("GET", "/health")

    def search(self, texts: str | Sequence[str], k: int = 4) -> list[list[dict]]:
        """For each text, its k nearest chunks (best first) as dicts: chunk_id, score,
        text, continuation, continuation_id, doc_id, pos, source, position."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return []
        out: list[list[dict]] = []
        for lo in range(0, len(texts), MAX_ITEMS):
            out += self._call("POST", "/query", {"texts": texts[lo:lo + MAX_ITEMS],
                                                 "k": k})["results"]
        return out

    def neighbours(self, chunk_ids: Optional[Sequence[int]] = None,
                   tokens: Optional[Sequence[Sequence[int]]] = None, k: int = 2,
                   exclude_same_doc: Optional[bool] = None, exclude_validation: bool = True,
                   exclude_overlap: Optional[float] = None) -> dict[str, np.ndarray]:
        """{"neighbours": int64 (n, k), -1 = none; "scores": float32 (n, k), NaN for -1;
        "blocks": int64 (n, k, 2 × chunk size), neighbour then continuation; "mask":
        bool, the same shape: real tokens}."""
        items = list(chunk_ids) if chunk_ids is not None else \
            [list(map(int, t)) for t in tokens or []]
        field = "chunk_ids" if chunk_ids is not None else "tokens"
        body: dict[str, Any] = {"k": k, "exclude_validation": exclude_validation}
        if exclude_same_doc is not None:
            body["exclude_same_doc"] = exclude_same_doc
        if exclude_overlap is not None:
            body["exclude_overlap"] = exclude_overlap
        parts = [self._call("POST", "/neighbours", {**body, field: [
            int(x) if field == "chunk_ids" else x for x in items[lo:lo + MAX_ITEMS]]})
            for lo in range(0, len(items), MAX_ITEMS)]
        if not parts:
            raise RetrodbError("neighbours: give chunk_ids or tokens")
        cat = {key: [row for p in parts for row in p[key]] for key in parts[0]}
        return {"neighbours": np.asarray(cat["neighbours"], dtype=np.int64),
                "scores": np.asarray([[np.nan if s is None else s for s in row]
                                      for row in cat["scores"]], dtype=np.float32),
                "blocks": np.asarray(cat["blocks"], dtype=np.int64),
                "mask": np.asarray(cat["mask"], dtype=bool)}


def field_name(loc) -> str:
    """("body", "texts", 3) → "texts[3]"."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    return out or "body"


def error_body(errors: list[dict]) -> tuple[dict, int]:
    """({"error", "field", "errors"}, status) of pydantic's errors for a request body:
    400 for bad JSON, else 422 naming each field."""
    found = []
    for e in errors:
        kind, fld, msg = e.get("type"), field_name(tuple(e.get("loc") or ())), e.get("msg")
        if kind == "json_invalid":
            why = (e.get("ctx") or {}).get("error", "decode error")
            return {"error": f"body: not valid JSON ({why})", "field": "body"}, 400
        if fld == "body" and kind in ("model_attributes_type", "dict_type", "model_type"):
            msg = "expected a JSON object (send Content-Type: application/json)"
        elif kind == "extra_forbidden":
            msg = "unknown field"
        found.append({"field": fld, "message": msg})
    first = (found or [{"field": "body", "message": "invalid"}])[0]
    return {"error": f"{first['field']}: {first['message']}", "field": first["field"],
            "errors": found}, 422


class RemoteNeighbours:
    """Neighbours from a `retrodb serve` service, looked up like a precomputed
    `NeighbourTable`: each database chunk's k nearest, own document and validation
    documents excluded (the neighbours stage's defaults), at the served set's operating
    point, so the answers are the precomputed set's."""

    def __init__(self, client: RemoteRetriever, k: int):
        self.client, self.k = client, k

    def lookup(self, chunk_ids) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(chunk_ids, dtype=np.int64)
        flat = q.reshape(-1)
        if not len(flat):
            return (np.zeros(q.shape + (self.k,), np.int64),
                    np.zeros(q.shape + (self.k,), np.float32))
        got = self.client.neighbours(chunk_ids=flat.tolist(), k=self.k,
                                     exclude_same_doc=True, exclude_validation=True)
        return (got["neighbours"].reshape(q.shape + (self.k,)),
                got["scores"].reshape(q.shape + (self.k,)))
