"""Path spellings against the admin allow-list, through the REAL nginx (the image's template) in
front of the real Waitress: one client outside KWS_ADMIN_ALLOW (127.0.0.1 made public by
allowing another address) and one inside it. nginx normalises the path once, passes only the
routes the api has, in their canonical spelling, and 404s the rest (issue 22, item 1)."""

from __future__ import annotations

import http.client
import re

import pytest

from tests.support.nginx import NginxProcess, TEMPLATE
from tests.support.paths import NGINX_DIR
from tests.support.processes import ApiProcess
from kws.serving.app import create_app
from kws.serving.openapi import OPERATOR_ROUTES, PUBLIC_ROUTES, STREAM_ROUTES
from tests.support.nginx import nginx_or_skip

TOKEN = "test-admin-token"
PUBLIC, ALLOWED = "public", "allowed"

# (method, path as sent, status for a public client, status for an allowed one). 200 = the api's
# answer (the body is checked too); 403 = nginx's forbidden; 404 = no such route.
CASES = [
    ("GET", "/metrics", 403, 200),
    ("GET", "/api/metrics", 403, 200),
    ("GET", "/api/api/metrics", 404, 404),          # the reported bypass: a doubled prefix
    ("GET", "/api//api/metrics", 404, 404),         # ... with "//"
    ("GET", "/api/api/api/metrics", 404, 404),
    ("GET", "//metrics", 403, 200),
    ("GET", "/api//metrics", 403, 200),
    ("GET", "/api///metrics", 403, 200),
    ("GET", "/api/%6detrics", 403, 200),            # %-encoded letters
    ("GET", "/api%2fmetrics", 403, 200),            # an encoded slash
    ("GET", "/api%2Fapi%2Fmetrics", 404, 404),
    ("GET", "/api/./metrics", 403, 200),
    ("GET", "/api/x/../metrics", 403, 200),
    ("GET", "/api/../metrics", 403, 200),
    ("GET", "/api/%2e%2e/api/metrics", 403, 200),   # an encoded ".." out of /api/ lands on /api/metrics
    ("GET", "/api/api/../metrics", 403, 200),
    ("GET", "/API/metrics", 404, 404),              # routes are case-sensitive, as in Flask
    ("GET", "/Metrics", 404, 404),
    ("GET", "/api/METRICS", 404, 404),
    ("GET", "/api/metrics/", 404, 404),
    ("GET", "/metrics/", 404, 404),
    ("GET", "/api/metrics;x", 404, 404),
    ("GET", "/api/metrics?x=1", 403, 200),
    ("GET", "/openapi.json", 403, 200),
    ("GET", "/api/openapi.json", 403, 200),
    ("GET", "/api/api/openapi.json", 404, 404),     # the reported bypass of the OpenAPI document
    ("GET", "/api//api/openapi.json", 404, 404),
    ("GET", "/api/openapi%2ejson", 403, 200),
    ("GET", "/api/openapi.public.json", 200, 200),  # the public copy (the page's footer link)
    ("GET", "/openapi.public.json", 200, 200),
    ("GET", "/api/api/openapi.public.json", 404, 404),
    ("GET", "/admin", 403, 403),                    # no such route: nginx denies all of /admin...
    ("GET", "/api/admin/", 403, 403),
    ("GET", "/api/admin/other", 403, 403),
    ("POST", "/admin/reload", 403, 200),
    ("POST", "/api/admin/reload", 403, 200),
    ("POST", "/api/api/admin/reload", 404, 404),    # the reported bypass of the reload
    ("POST", "/api//api/admin/reload", 404, 404),
    ("POST", "/api//admin/reload", 403, 200),
    ("POST", "/api/admin%2freload", 403, 200),
    ("POST", "/api/admin/./reload", 403, 200),
    ("POST", "/api/%61dmin/reload", 403, 200),
    ("POST", "/api/Admin/reload", 404, 404),
    ("GET", "/health", 200, 200),
    ("GET", "/api/health", 200, 200),
    ("GET", "/api//health", 200, 200),
    ("GET", "/api/api/health", 404, 404),
    ("GET", "/api/model", 200, 200),
    ("GET", "/api/nope", 404, 404),
    ("GET", "/api/", 404, 404),
]


def _body_ok(path: str, body: bytes) -> bool:
    """The 200 came from the route the path names (not some other page)."""
    text = body.decode("utf-8", "replace")
    if "metrics" in path.lower() or "%6detrics" in path:
        return "kws_http_requests" in text
    if "openapi" in path:
        return '"openapi"' in text
    if "reload" in path:
        return '"reloaded"' in text
    if "health" in path:
        return '"ok"' in text
    if "model" in path:
        return '"labels"' in text
    return False


def _send(url: str, method: str, path: str) -> tuple[int, bytes]:
    """The path exactly as written (http.client sends it unchanged; requests/urllib3 would not)."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Length": "0"}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def token_api(tmp_path_factory, bundle):
    """The real Waitress server with KWS_ADMIN_TOKEN set, so /admin/reload answers 200 when reached."""
    proc = ApiProcess(bundle, tmp_path_factory.mktemp("paths") / "api", env={"KWS_ADMIN_TOKEN": TOKEN})
    with proc:
        yield proc


@pytest.fixture(scope="module")
def proxies(tmp_path_factory, token_api):
    nginx_or_skip()
    up = f"127.0.0.1:{token_api.port}"
    # 127.0.0.1 counts as public when another address is the only one allowed.
    with NginxProcess(tmp_path_factory.mktemp("ngx-public"), upstream=up, admin_allow="10.255.255.1") as pub, \
            NginxProcess(tmp_path_factory.mktemp("ngx-allowed"), upstream=up, admin_allow="127.0.0.1") as ok:
        yield {PUBLIC: pub, ALLOWED: ok}


@pytest.mark.parametrize("method,path,public,allowed", CASES, ids=[f"{m} {p}" for m, p, _, _ in CASES])
def test_path_variants_through_nginx(proxies, method, path, public, allowed):
    for client, want in ((PUBLIC, public), (ALLOWED, allowed)):
        status, body = _send(proxies[client].url, method, path)
        assert status == want, (client, method, path, status, body[:300])
        if status == 200:
            assert _body_ok(path, body), (client, path, body[:300])
        else:  # every refusal is the JSON error shape, never HTML
            assert body.startswith(b'{"error"'), (client, path, body[:300])


def test_the_api_serves_only_canonical_spellings():
    """Flask, reached directly: each route at /X and /api/X only; no "//" merging (a redirect
    to a route would let a spelling nginx refuses through), no doubled prefix."""
    c = create_app({"preload": False}).test_client()
    for path in ("/metrics", "/api/metrics", "/openapi.json", "/api/openapi.public.json", "/health"):
        assert c.get(path).status_code == 200, path
    for path in ("/api/api/metrics", "//metrics", "/api//metrics", "/api/api/openapi.json", "/API/metrics",
                 "/metrics/", "/api//api/metrics"):
        resp = c.get(path)
        assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found", (path, resp.status_code)
    assert c.post("/api/api/admin/reload").status_code == 404


def test_nginx_and_the_api_list_the_same_routes():
    """One list of routes: the api's url map, the OpenAPI document, and nginx's two locations."""
    app = create_app({"preload": False})
    rules = {r.rule for r in app.url_map.iter_rules() if r.endpoint != "static"}
    routes = set(PUBLIC_ROUTES) | set(OPERATOR_ROUTES)
    served = routes | set(STREAM_ROUTES)
    assert rules == served | {"/api" + r for r in served}
    from kws.serving.openapi import document

    streams = {r.replace("<sid>", "{session}") for r in STREAM_ROUTES}
    assert set(document()["paths"]) == routes | streams
    assert set(document(public=True)["paths"]) == set(PUBLIC_ROUTES) | streams
    site = TEMPLATE.read_text()
    lists: dict[str, set[str]] = {"public": set(), "operator": set()}
    for names, body in re.findall(r"location ~ \^\(\?:/api\)\?\(/(?:\(\?:)?([^)]*)\)?\)\$ \{(.*?)\n    \}", site, re.S):
        assert "proxy_pass http://kws_api;" in body and "rewrite" in body, body
        kind = "operator" if "allow " in body else "public"
        lists[kind] |= {"/" + name.replace("\\.", ".") for name in names.split("|")}
    assert lists == {"public": set(PUBLIC_ROUTES), "operator": set(OPERATOR_ROUTES)}, lists
    # the stream routes have their own location (pinned by session), proxied to the api at /stream[/ID]
    stream = re.search(r"location ~ \^\(\?:/api\)\?\(/stream\(\?:/\[A-Za-z0-9_-\]\+\)\?\)\$ \{(.*?)\n    \}", site, re.S)
    assert stream and "proxy_pass http://kws_api_stream;" in stream.group(1) and "rewrite" in stream.group(1)


def test_the_page_links_an_openapi_description_a_public_visitor_can_read(proxies):
    """The footer link of nginx/html/index.html (issue 22, item 9), followed as a browser would
    from the page at "/", by a client outside KWS_ADMIN_ALLOW: the public routes, no operator ones."""
    from urllib.parse import urljoin

    page = (NGINX_DIR / "html" / "index.html").read_text()
    links = re.findall(r'<a href="([^"]+)">API description \(OpenAPI\)</a>', page)
    assert len(links) == 1, links
    status, body = _send(proxies[PUBLIC].url, "GET", urljoin("/", links[0]))
    assert status == 200, body[:300]
    import json

    doc = json.loads(body)
    assert doc["openapi"].startswith("3.") and set(doc["paths"]) == set(PUBLIC_ROUTES) | {
        r.replace("<sid>", "{session}") for r in STREAM_ROUTES}
