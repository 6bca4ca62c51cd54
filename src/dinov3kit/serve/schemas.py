"""Shapes of the JSON answers, for validation and for the API documentation at /docs."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorAnswer(BaseModel):
    error: str = Field(description="what was wrong and what to do")
    status: int = Field(description="the HTTP status code")


class Info(BaseModel):
    index: str = Field(description="the index that is served")
    rows: int
    dim: int = Field(description="width of the feature vectors")
    feature: str = Field(description="the compared feature: cls or mean_patch")
    model: str
    model_loaded: bool = Field(description="false: uploads and dense views are off, rows can still be searched")
    model_error: str | None
    resolution: int = Field(description="input size of query embeddings (the index's)")
    bad_inputs: int = Field(description="images the index could not embed")
    map_methods: list[str]
    max_k: int
    dense_resolution: list[int] = Field(description="[smallest, largest] resolution of dense views")
    dedup_floor: float = Field(description="lowest duplicate threshold")
    thumbnail_sizes: list[int]
    max_upload_bytes: int


class RowInfo(BaseModel):
    row: int
    path: str


class Hit(BaseModel):
    rank: int = Field(description="1 = most similar")
    row: int
    path: str
    score: float = Field(description="cosine similarity to the query")


class SearchQuery(BaseModel):
    row: int | None = None
    path: str | None = None
    upload: str | None = Field(None, description="the uploaded file's name")
    embed_ms: float | None = Field(None, description="time to embed the uploaded image")


class SearchResult(BaseModel):
    query: SearchQuery
    k: int
    hits: list[Hit]
    search_ms: float = Field(description="time of the search itself (not the query's embedding)")
    search_cpu_ms: float = Field(description="CPU time of the search in the answering thread (its wall time without waiting)")


class Member(BaseModel):
    row: int
    path: str
    similarity: float = Field(description="cosine similarity to the group's first member")


class Group(BaseModel):
    group: int = Field(description="1 = the largest group")
    size: int
    members: list[Member]


class Duplicates(BaseModel):
    threshold: float
    groups: int = Field(description="number of groups")
    duplicates: int = Field(description="images duplicating another (group sizes minus one, summed)")
    listed: list[Group] = Field(description="the largest groups, up to `limit`")


class MapPoints(BaseModel):
    method: str
    rows: int
    x: list[float] = Field(description="per row, in [0, 1]")
    y: list[float] = Field(description="per row, in [0, 1]")


class DenseView(BaseModel):
    id: str = Field(description="for the image, PCA and similarity routes")
    width: int = Field(description="width of the pictures in pixels (the model's input)")
    height: int
    grid: list[int] = Field(description="[rows, columns] of patches")
    resolution: int = Field(description="shortest side used (lowered for very elongated images)")
    image: str = Field(description="URL of the image at the model's input size")
    pca: str = Field(description="URL of the PCA-of-patches picture")


ERRORS = {
    status: {"model": ErrorAnswer, "description": description}
    for status, description in {
        400: "bad value",
        404: "no such row or dense view",
        413: "upload over the size limit",
        422: "invalid parameter, or not a usable image",
        503: "no model loaded (uploads and dense views)",
    }.items()
}
