"""Property-based API testing with schemathesis over the app's own OpenAPI schema.

Default checks: no 5xx, status codes and content types the schema documents, bodies that match
the documented schemas, invalid input rejected, valid input accepted.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from reliability_support import API, make_settings, scene
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.transport.serialization import Binary

from app.main import create_app

pytestmark = pytest.mark.slow
MAX_EXAMPLES = 25


def _image_bytes(fmt: str, width: int, height: int, rgb: tuple[int, int, int]) -> Binary:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(buf, format=fmt)
    return Binary(buf.getvalue())


# A binary upload field takes an image: JSON Schema cannot say so, and arbitrary bytes are
# refused (400/415, see test_bad_input.py). Generate real images, so valid requests are valid.
schemathesis.openapi.format("binary", st.builds(
    _image_bytes, st.sampled_from(["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]),
    st.integers(1, 48), st.integers(1, 48),
    st.tuples(*[st.integers(0, 255)] * 3)))


def _seed(data_dir: Path) -> None:
    """A few items so generated ids sometimes hit real rows (ids 1-3)."""
    with TestClient(create_app(make_settings(data_dir))) as client:
        for i in range(3):
            data, caption = scene(i)
            resp = client.post(f"{API}/images", files={"files": ("s.png", data, "image/png")},
                               data={"caption": caption, "tags": "seed"})
            assert resp.status_code == 201, resp.text


# The app is built at import for its schema; its data dir is set before its lifespan first runs
# (on schemathesis's first call), and that lifespan is ended after the module.
APP = create_app(make_settings(Path("data-dir-set-by-the-fixture")))
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP  # calls go in-process through the ASGI transport


@pytest.fixture(scope="module", autouse=True)
def _app_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    data_dir = tmp_path_factory.mktemp("schema") / "data"
    _seed(data_dir)
    APP.state.settings = make_settings(data_dir)
    yield
    # schemathesis keeps an app's lifespan running for the whole process; end it (store closed).
    schemathesis_asgi.shutdown_lifespans()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_matches_its_schema(case: schemathesis.Case) -> None:
    # Multipart bodies (image upload and image queries) cannot carry what the data checks
    # assume: an image field is "valid" to JSON Schema whatever its bytes, so non-images are
    # rightly refused (400/415/422); and every field is text on the wire, so a "negated" null or
    # number arrives as the valid text "null" or "123". Every other check (no 5xx, documented
    # status codes, content types, response schemas, headers, auth) still runs on them, and
    # all checks on JSON and query/path requests.
    excluded = []
    if (case.media_type or "").startswith("multipart/"):
        excluded = [schemathesis.checks.positive_data_acceptance,
                    schemathesis.checks.negative_data_rejection]
    # A raw FTS5 query is any string to JSON Schema; FTS5's grammar decides, and a query it
    # cannot parse is a 400 by design (never a 5xx: that check still runs).
    if isinstance(case.body, dict) and case.body.get("keyword_syntax") == "fts5":
        excluded = [schemathesis.checks.positive_data_acceptance]
    case.call_and_validate(excluded_checks=excluded)
