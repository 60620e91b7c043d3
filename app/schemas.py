"""Request and response models of the REST API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MAX_K = 1000
MAX_QUERY_CHARS = 100_000
# Largest id the API accepts: exact as a JSON number in every client (2**53 - 1), and far above
# any SQLite row id a collection reaches; a larger one is a 422, never an OverflowError.
MAX_ID = 2**53 - 1
# What _clean_text accepts, for the schema: some character that is neither whitespace nor NUL.
TEXT_PATTERN = r"[^\s\x00]"


def _json_int(v: object) -> object:
    # JSON types as documented: 10 and 10.0 are integers, "10" and true are not
    if isinstance(v, (bool, str)):
        raise ValueError("must be an integer")
    return v


JsonInt = Annotated[int, BeforeValidator(_json_int)]


# Whitespace as JSON Schema's (ECMAScript) \s knows it: Python's str.isspace() also counts the
# separators \x1c-\x1f, which the documented pattern accepts, so the check uses this set.
_ECMA_SPACE = frozenset("\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff"
                        + "".join(chr(c) for c in range(0x2000, 0x200B)))


def _clean_text(v: str) -> str:
    v = v.replace("\x00", " ")
    if all(c in _ECMA_SPACE for c in v):
        raise ValueError("must not be empty or whitespace")
    return v


class ItemOut(BaseModel):
    id: int
    caption: str | None
    tags: list[str]
    file_url: str
    content_type: str
    width: int | None
    height: int | None
    bytes: int | None
    sha256: str
    original_name: str | None
    created_at: float
    duplicate: bool = False


class NearDuplicate(BaseModel):
    id: int
    similarity: float = Field(description="aligned pixel correlation (1 for the same pixels)")
    caption: str | None
    original_name: str | None
    file_url: str


class UploadedItem(ItemOut):
    near_duplicates: list[NearDuplicate] = Field(
        default_factory=list, description="stored images this one is a near duplicate of "
        "(re-encoded, resized, slightly cropped or brightened copies); empty for an exact "
        "duplicate, which is the stored item itself")


class UploadResponse(BaseModel):
    items: list[UploadedItem]


class DuplicatesResponse(BaseModel):
    id: int
    duplicates: list[NearDuplicate]


class DuplicateGroup(BaseModel):
    item: ItemOut
    duplicates: list[NearDuplicate]


class DuplicateGroupPage(BaseModel):
    groups: list[DuplicateGroup] = Field(
        description="images of this page of the collection (newest first) that have near "
        "duplicates, each with them; a pair appears under each of its two images")
    total: int = Field(description="images in the collection")
    offset: int
    limit: int


class ItemPage(BaseModel):
    items: list[ItemOut]
    total: int
    offset: int
    limit: int


class Hit(BaseModel):
    id: int
    score: float = Field(description="cosine similarity of the query and the image")
    match: float | None = Field(None, description="attention-fusion match probability (re-rank)")
    caption: str | None
    tags: list[str]
    file_url: str


class TextHit(Hit):
    original_name: str | None = Field(
        None, description="the uploaded file's name (keyword search matches it)")
    vector_rank: int | None = Field(
        None, description="text search: rank in the vector list (after the attention re-rank), "
        "null when the vector side did not return it or did not run (mode keyword)")
    keyword_rank: int | None = Field(
        None, description="text search: rank in the keyword (BM25) list, null when the keyword "
        "side did not return it or did not run (mode vector)")


class SearchResponse(BaseModel):
    hits: list[Hit]
    took_ms: float
    reranked: bool
    fusion: str


class TextSearchResponse(BaseModel):
    hits: list[TextHit]
    took_ms: float
    reranked: bool
    fusion: str
    mode: Literal["vector", "keyword", "hybrid"]
    filtered: int = Field(description="hits of the top k that min_match / min_score left out")


class _SearchBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: JsonInt = Field(10, ge=1, le=MAX_K)
    tags: list[str] | None = Field(None, max_length=50)

    @field_validator("tags")
    @classmethod
    def _normalise_tags(cls, v: list[str] | None) -> list[str] | None:
        # Uploads store tags trimmed and lower-cased; filter in the same form.
        if v is None:
            return None
        return [t.strip().lower() for t in v if t.strip()] or None


class TextSearch(_SearchBase):
    query: str = Field(..., max_length=MAX_QUERY_CHARS,
                       json_schema_extra={"pattern": TEXT_PATTERN},
                       description="free text; longer than the model's context is truncated")
    rerank: bool | None = Field(None, strict=True,
                                description="attention re-rank (default: on when trained)")
    mode: Literal["vector", "keyword", "hybrid"] = Field(
        "vector", description="vector: the dual encoder; keyword: BM25 over captions, tags and "
        "original file names; hybrid: reciprocal rank fusion of both lists")
    keyword_syntax: Literal["terms", "fts5"] = Field(
        "terms", description="terms: the query's words as written (any text is valid); fts5: "
        "SQLite FTS5 query syntax (AND/OR/NOT, prefix*, \"phrases\", NEAR, tags: beach); "
        "a syntax error is a 400")
    min_match: float | None = Field(
        None, ge=0.0, le=1.0, description="leave out hits whose attention-fusion match "
        "probability is under this (the web page hides hits under 0.275, the threshold chosen "
        "on the OOD val split in docs/search-quality.md)")
    min_score: float | None = Field(
        None, ge=-1.0, le=1.0, description="leave out hits whose cosine is under this")

    _clean = field_validator("query")(_clean_text)


class ImageIdSearch(_SearchBase):
    image_id: JsonInt = Field(..., ge=1, le=MAX_ID)
    target: Literal["images", "captions"] = "images"


class ComposedIdSearch(_SearchBase):
    image_id: JsonInt = Field(..., ge=1, le=MAX_ID)
    text: str = Field(..., max_length=MAX_QUERY_CHARS,
                      json_schema_extra={"pattern": TEXT_PATTERN})

    _clean = field_validator("text")(_clean_text)


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: JsonInt = Field(..., ge=1, le=MAX_ID)
    text: str = Field(..., max_length=MAX_QUERY_CHARS,
                      json_schema_extra={"pattern": TEXT_PATTERN})

    _clean = field_validator("text")(_clean_text)


class Explanation(BaseModel):
    image_id: int
    text: str
    probability: float = Field(description="attention-fusion match probability")
    grid: list[list[float]] = Field(description="attention over image patches, rows x cols")
    rows: int
    cols: int


MAX_QUESTION_CHARS = 200


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: JsonInt = Field(..., ge=1, le=MAX_ID)
    question: str = Field(..., min_length=1, max_length=MAX_QUESTION_CHARS,
                          json_schema_extra={"pattern": TEXT_PATTERN},
                          description="e.g. “what colour is the circle?”, “how many objects "
                          "are there?”, “is the star left of the square?”")

    _clean = field_validator("question")(_clean_text)


class DescribeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: JsonInt = Field(..., ge=1, le=MAX_ID)


class Alternative(BaseModel):
    answer: str
    probability: float


class AskResponse(BaseModel):
    image_id: int | None = Field(description="the stored image asked about; null for an upload")
    question: str
    answer: str = Field(description="the most probable answer")
    probability: float = Field(description="calibrated probability of the answer")
    alternatives: list[Alternative] = Field(description="the next three answers, most probable "
                                                        "first")
    grid: list[list[float]] = Field(description="the question's attention over the image "
                                                "patches, rows x cols, sums to 1")
    rows: int
    cols: int


class DescribeResponse(BaseModel):
    image_id: int | None = Field(description="the stored image described; null for an upload")
    caption: str = Field(description="a generated caption of the scene")
    probability: float = Field(description="the decoder's probability of this caption")


class Health(BaseModel):
    status: str


class CpuOut(BaseModel):
    model: str = Field(description="the CPU's model name (/proc/cpuinfo, else the platform)")
    flags: list[str] = Field(description="which of avx2, avx512f, avx512_vnni, avx512_bf16, "
                                         "amx_bf16 it has")
    native_bf16: bool


class Info(BaseModel):
    model: str
    dim: int
    trained: bool
    has_fusion: bool
    fusion: str
    has_ask: bool = Field(False, description="a question-answering head: /api/v1/ask answers "
                                             "(else 409 not_available)")
    has_describe: bool = Field(False, description="a captioning head: /api/v1/describe answers "
                                                  "(else 409 not_available)")
    precision: str
    precision_reason: str = Field(description="why this precision: the setting, or what "
                                              "`auto` read from the CPU or GPU")
    device: str = Field(description="where the model runs: cpu, cuda or cuda:N")
    runtime: str = Field("torch", description="what runs the encoders and match head: torch, "
                         "onnxruntime or openvino (FUSION_RUNTIME); where `auto` splits the "
                         "parts between runtimes, each with its parts, e.g. "
                         "`onnxruntime (text), torch (images, match)`")
    runtime_parts: dict[str, str] = Field(
        default_factory=dict, description="what runs each part (images, text, match) and in "
        "which precision, e.g. {\"text\": \"onnxruntime fp32\"}")
    runtime_reason: str = Field("", description="why this runtime: the setting, or what "
                                "`auto` measured on this CPU")
    threads: int = Field(0, description="CPU threads this process's model runs on "
                         "(FUSION_TORCH_THREADS; else all cores, or with `fusion-search serve "
                         "--workers N` each worker's share of them)")
    cpu: CpuOut
    index: str
    items: int
    vectors: int
    rerank_depth: int
    auth: dict[str, bool]
    limits: dict[str, int]
