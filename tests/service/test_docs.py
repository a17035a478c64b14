"""/docs works offline: the page names no other host, and the JS and CSS it loads come from the app itself."""
from __future__ import annotations

import re


def test_docs_load_nothing_from_elsewhere(client):
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    assert re.findall(r"https?://[^\s\"'<>]+", r.text) == []
    assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", r.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        got = client.get(asset)
        assert got.status_code == 200 and len(got.content) > 1000, asset
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert client.get("/redoc").status_code == 404  # Redoc would load from a CDN
    assert client.get("/openapi.json").status_code == 200
