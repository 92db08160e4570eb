"""``moerules playground``: a local page to edit a bundle and see what it does, live.

A starlette app serving one page (``static/``: plain HTML, CSS and JavaScript, nothing fetched
from elsewhere, so it works offline) and a small JSON API the page calls as the rules change:

* ``GET /api/state``: the bundle file's text, the sample's records, the JSON Schema (for the
  editor's completion);
* ``POST /api/evaluate``: compile the edited text and run one record: problems (errors and
  warnings, at their line and column), the requests, the explain trace;
* ``POST /api/test``: the bundle's YAML tests, run against the edited text;
* ``POST /api/diff``: the edited text against the file on disk, over the sample;
* ``POST /api/save``: write the text back, unless the file changed on disk meanwhile.

Safety: it listens on 127.0.0.1 unless told otherwise; every API call must carry the token the
page was served with (a custom header, so another site's page cannot make the browser call it:
that would need a CORS preflight, which is never granted) and a loopback ``Host`` (no DNS
rebinding); bodies are capped; rule text goes through the same loader, limits and sandbox as
the CLI, and outputs are the dry run's, secrets redacted.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from moerules.engine.errors import MoerulesError, Problem, RuleError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

__all__ = ["Playground", "create_app"]

MAX_BODY = 2 << 20  # bytes of a request body: a rule file is capped at 1 MiB, a record less
SAMPLE_RECORDS = 500  # records offered in the page's picker
DIFF_RECORDS = 10_000  # records the diff runs over
CHANGES_SHOWN = 20  # changes sent per kind of change
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


@dataclass
class Playground:
    """What the page works on: a bundle file and a sample."""

    bundle: Path
    sample: list[tuple[int, bytes]] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    hosts: frozenset[str] = frozenset({"127.0.0.1", "localhost", "[::1]"})

    def text(self) -> str:
        return self.bundle.read_text(encoding="utf-8")

    def version(self) -> str:
        return hashlib.sha256(self.bundle.read_bytes()).hexdigest()[:16]


def _json(data: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(data, default=str), status_code=status, media_type="application/json"
    )


def _problem(problem: Problem, bundle: Path) -> dict[str, Any]:
    pos = problem.position
    mine = Path(pos.path).resolve() == bundle.resolve() if pos.path else False
    return {
        "line": pos.line,
        "col": pos.col,
        "severity": problem.severity,
        "message": problem.message,
        "file": pos.path,
        "here": mine,
        "text": str(problem),
    }


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def create_app(playground: Playground) -> Starlette:
    """The playground's web app (served by uvicorn in ``moerules playground``; tests too)."""
    state = playground

    def guarded(handler: Callable[[Request, Any], Response]) -> Handler:
        async def endpoint(request: Request) -> Response:
            host = request.headers.get("host", "").rsplit(":", 1)[0]
            if host not in state.hosts:
                return _json({"error": "this playground answers on its loopback address only"}, 403)
            if request.headers.get("x-moerules-token") != state.token:
                return _json({"error": "missing or wrong playground token: reload the page"}, 403)
            body: Any = None
            if request.method == "POST":
                raw = await request.body()
                if len(raw) > MAX_BODY:
                    return _json({"error": f"request larger than {MAX_BODY} bytes"}, 413)
                try:
                    body = orjson.loads(raw or b"{}")
                except orjson.JSONDecodeError:
                    return _json({"error": "the body is not JSON"}, 400)
                if not isinstance(body, dict):
                    return _json({"error": "the body is not a JSON object"}, 400)
            return handler(request, body)

        return endpoint

    async def page(request: Request) -> Response:
        host = request.headers.get("host", "").rsplit(":", 1)[0]
        if host not in state.hosts:
            return HTMLResponse("this playground answers on its loopback address only", 403)
        html = _asset("index.html").replace("__TOKEN__", state.token)
        return HTMLResponse(
            html, headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP}
        )

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return Response(status_code=404)
        return Response(
            _asset(name), media_type=_STATIC[name], headers={"Cache-Control": "no-store"}
        )

    def get_state(request: Request, body: Any) -> Response:
        from moerules.engine.rules.schema import bundle_schema

        return _json(
            {
                "bundle": str(state.bundle),
                "text": state.text(),
                "version": state.version(),
                "records": [
                    {"line": n, "text": line.decode("utf-8", "replace").strip()}
                    for n, line in state.sample[:SAMPLE_RECORDS]
                ],
                "schema": bundle_schema(),
                "tests": [str(p) for p in _tests(state)],
            }
        )

    def evaluate(request: Request, body: Any) -> Response:
        return _json(
            evaluate_text(state.bundle, str(body.get("text", "")), str(body.get("record", "")))
        )

    def run_tests(request: Request, body: Any) -> Response:
        from moerules.engine.authoring.testing import run_test_file

        text = str(body.get("text", ""))
        files: list[dict[str, Any]] = []
        passed = failed = 0
        for path in _tests(state):
            try:
                results = run_test_file(path, (state.bundle, text))
            except RuleError as exc:
                files.append({"file": str(path), "error": str(exc)})
                failed += 1
                continue
            cases: list[dict[str, Any]] = [
                {"name": r.name, "passed": r.passed, "at": str(r.position), "failures": r.failures}
                for r in results
            ]
            passed += sum(r.passed for r in results)
            failed += sum(not r.passed for r in results)
            files.append({"file": str(path), "cases": cases})
        return _json(
            {
                "passed": passed,
                "failed": failed,
                "files": files,
                "summary": f"{passed} passed, {failed} failed",
            }
        )

    def diff(request: Request, body: Any) -> Response:
        from moerules.engine.api import load_bundle
        from moerules.engine.authoring.diff import diff_bundles

        try:
            old = load_bundle(state.bundle)
        except RuleError as exc:
            return _json({"error": "the file on disk does not compile:\n" + str(exc)})
        try:
            new = load_bundle(state.bundle, text=str(body.get("text", "")))
        except RuleError as exc:
            return _json({"error": "the edited rules do not compile:\n" + str(exc)})
        result = diff_bundles(
            old, new, state.sample[:DIFF_RECORDS], old_label="on disk", new_label="edited"
        ).to_dict()
        for group in result["groups"]:
            group["changes"] = group["changes"][:CHANGES_SHOWN]
        return _json(result)

    def save(request: Request, body: Any) -> Response:
        text = body.get("text")
        if not isinstance(text, str):
            return _json({"error": "nothing to save"}, 400)
        if body.get("version") != state.version():
            return _json(
                {
                    "error": f"{state.bundle} changed on disk since the page loaded it; "
                    "reload the page (your edit is lost on reload: copy it "
                    "first)"
                },
                409,
            )
        state.bundle.write_text(text, encoding="utf-8")
        return _json({"saved": str(state.bundle), "version": state.version()})

    routes = [
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/state", guarded(get_state)),
        Route("/api/evaluate", guarded(evaluate), methods=["POST"]),
        Route("/api/test", guarded(run_tests), methods=["POST"]),
        Route("/api/diff", guarded(diff), methods=["POST"]),
        Route("/api/save", guarded(save), methods=["POST"]),
    ]
    return Starlette(routes=routes)


_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _asset(name: str) -> str:
    return resources.files(__package__ or "").joinpath("static", name).read_text(encoding="utf-8")


def _tests(state: Playground) -> list[Path]:
    folder = state.bundle.parent / "tests"
    return sorted(folder.glob("*.y*ml")) if folder.is_dir() else []


def evaluate_text(bundle: Path, text: str, record: str) -> dict[str, Any]:
    """Compile ``text`` (the bundle file's edited content) and run ``record`` through it:
    problems, requests and the explain trace, as the page shows them."""
    from moerules.engine.authoring.explain import explain_record
    from moerules.engine.authoring.path_checks import record_path_warnings
    from moerules.engine.compile.compiler import compile_bundle
    from moerules.engine.rules.overlay import load_bundle_document

    out: dict[str, Any] = {
        "problems": [],
        "requests": [],
        "trace": "",
        "steps": [],
        "report": None,
        "compiled": False,
    }
    try:
        raw = load_bundle_document(bundle, text=text)
        traced = compile_bundle(raw, trace=True)
    except RuleError as exc:
        out["problems"] = [_problem(p, bundle) for p in exc.problems]
        return out
    out["compiled"] = True
    out["problems"] = [_problem(p, bundle) for p in record_path_warnings(raw, traced)]
    line = record.strip().encode()
    if not line:
        return out
    try:
        explanation = explain_record(traced, line)
    except MoerulesError as exc:  # explain reports bad records itself; anything else here
        out["error"] = str(exc)
        return out
    buffer = io.StringIO()
    buffer.write(explanation.render())
    out.update(
        requests=explanation.requests,
        steps=explanation.steps,
        trace=buffer.getvalue(),
        report=explanation.report,
    )
    return out


def serve(
    playground: Playground, host: str, port: int, ready: Callable[[str], None] | None = None
) -> None:
    """Serve the playground until interrupted."""
    import uvicorn

    config = uvicorn.Config(
        create_app(playground), host=host, port=port, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    if ready is not None:
        shown = f"[{host}]" if ":" in host else host
        ready(f"http://{shown}:{port}/")
    server.run()
