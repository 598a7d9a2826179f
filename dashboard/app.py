"""The Dash app: one shell (top bar, live refresh, routing) and one module per page.

``create_app(root)`` serves every study under ``root``. URLs: ``/studies``, ``/leaderboard``
(also ``/``), ``/trial/<trial_id>``, ``/compare``, ``/explanations``, each with
``?study=<key>``; ``/files?study=&path=`` serves a file from inside a study directory only,
``/render/overlay.png?...`` draws an explanation overlay.
"""

from __future__ import annotations

import mimetypes
import urllib.parse
import warnings
from dataclasses import dataclass

import dash
from dash import Input, Output, State, dcc, html
from flask import Response, abort, request, send_file

from . import auth, memo
from .data import Catalog, StudyUnreadable
from .explain import Explanations
from .pages import discover
from .pages.common import href, notice

# DataTable still ships with Dash and does server-side paging well; its future move is not ours.
warnings.filterwarnings("ignore", message="The dash_table.DataTable will be removed")

PAGES = discover()  # {path: module} of every page module declaring PAGE
# Pages drawn from the study's files alone: memoised on those files (memo.view).
MEMO_PAGES = tuple(path for path, module in PAGES.items() if module.PAGE.memo)
NAV = tuple(
    (path, module.PAGE.nav)
    for path, module in sorted(PAGES.items(), key=lambda item: item[1].PAGE.order)
    if module.PAGE.nav
)


@dataclass
class Context:
    """What every page needs: the studies and how often to look for new results."""

    catalog: Catalog
    refresh_ms: int = 5000


def create_app(root: str, token: str | None = None, refresh_s: float = 5.0) -> dash.Dash:
    """The dashboard for the study (or folder of studies) at ``root``; ``token`` guards it."""
    ctx = Context(Catalog(root), int(refresh_s * 1000))
    app = dash.Dash(
        __name__,
        title="cytotune",
        suppress_callback_exceptions=True,
        update_title=None,
    )
    app.index_string = INDEX.replace("{%css_extra%}", CSS)
    if token:
        auth.require_token(app.server, token)
    _add_file_routes(app, ctx)
    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            dcc.Interval(id="tick", interval=ctx.refresh_ms),
            dcc.Store(id="version"),
            html.Div(
                [
                    html.Span("cytotune", className="brand"),
                    html.Nav(id="nav", className="nav"),
                    html.Span(id="study-chip", className="study-chip"),
                ],
                className="topbar",
            ),
            dcc.Loading(html.Div(id="page", className="page"), type="dot", delay_show=400),
        ]
    )

    @app.callback(
        Output("page", "children"),
        Output("nav", "children"),
        Output("study-chip", "children"),
        Input("url", "pathname"),
        Input("url", "search"),
    )
    def route(pathname, search):
        name, arg = parse_path(pathname)
        params = dict(urllib.parse.parse_qsl((search or "").lstrip("?")))
        params.pop("token", None)
        key = params.get("study")
        nav = [
            dcc.Link(
                label,
                href=href(page, key),
                className="active" if page == name else "",
                id=f"nav-{page}",
            )
            for page, label in NAV
        ]
        try:
            module = PAGES.get(name)
            if module is not None and not module.PAGE.needs_study:
                return module.layout(ctx, None, params), nav, ""
            study = ctx.catalog.get(key)
            chip = [
                html.B(study.key),
                f" · {study.status_or_empty().get('status', 'no study.json')}",
            ]
            nav = [
                dcc.Link(
                    label,
                    href=href(page, study.key),
                    className="active" if page == name else "",
                    id=f"nav-{page}",
                )
                for page, label in NAV
            ]
            if module is None:
                return notice(f"No page {pathname!r}.", "error"), nav, chip
            page_params = {**params, "arg": arg}
            if name not in MEMO_PAGES:
                return module.layout(ctx, study, page_params), nav, chip
            page = memo.view(
                study,
                f"page:{name}",
                memo.freeze(page_params),
                lambda: module.layout(ctx, study, page_params),
                trial_id=params.get("trial") or (arg if name == "trial" else None),
            )
            return page, nav, chip
        except StudyUnreadable as exc:
            return notice(str(exc), "error"), nav, ""
        except Exception as exc:  # never a traceback in the browser
            return (
                notice(f"This page could not be drawn: {type(exc).__name__}: {exc}", "error"),
                nav,
                "",
            )

    @app.callback(
        Output("version", "data"),
        Input("tick", "n_intervals"),
        Input("url", "search"),
        State("version", "data"),
    )
    def watch(_, search, current):
        key = dict(urllib.parse.parse_qsl((search or "").lstrip("?"))).get("study")
        try:
            signature = repr(ctx.catalog.get(key).signature())
        except StudyUnreadable:
            signature = "none"
        return dash.no_update if signature == current else signature

    for module in PAGES.values():
        module.register(app, ctx)
    return app


def parse_path(pathname: str | None) -> tuple[str, str | None]:
    parts = [p for p in (pathname or "/").split("/") if p]
    if not parts:
        return "leaderboard", None
    return parts[0], "/".join(parts[1:]) or None


def _add_file_routes(app: dash.Dash, ctx: Context) -> None:
    server = app.server

    @server.route("/files")
    def study_file():
        try:
            path = ctx.catalog.file(request.args.get("study", ""), request.args.get("path", ""))
        except PermissionError:
            abort(403)
        except (FileNotFoundError, StudyUnreadable, OSError, ValueError):
            abort(404)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return send_file(path, mimetype=kind, max_age=60)

    @server.route("/render/overlay.png")
    def render_overlay():
        args = request.args
        try:
            study = ctx.catalog.get(args.get("study"))
            channels = [int(c) for c in args.get("channels", "").split(",") if c.strip()]
            png = Explanations(study).render(
                args.get("trial", ""),
                args.get("method", ""),
                args.get("cell", ""),
                channels=channels or None,
                cmap=args.get("cmap", "auto"),
                alpha=min(1.0, max(0.0, float(args.get("alpha", 0.6)))),
                mode=args.get("mode", "side"),
                percentile=float(args.get("pct", 99.5)),
                smooth=float(args.get("smooth", 0)),
            )
        except (KeyError, FileNotFoundError, StudyUnreadable):
            abort(404)
        except ValueError:
            abort(400)
        return Response(png, mimetype="image/png", headers={"Cache-Control": "max-age=300"})


INDEX = """<!DOCTYPE html>
<html>
<head>{%metas%}<title>{%title%}</title>{%favicon%}{%css%}<style>{%css_extra%}</style></head>
<body>{%app_entry%}<footer>{%config%}{%scripts%}{%renderer%}</footer></body>
</html>"""

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f3f5f8;color:#1f2933;font-size:14px}
.topbar{background:#1e293b;color:#fff;display:flex;align-items:center;padding:0 22px;height:50px;gap:26px;position:sticky;top:0;z-index:50}
.brand{font-weight:700;font-size:18px;letter-spacing:.4px}
.nav{display:flex;gap:4px;height:100%}
.nav a{color:#cbd5e1;text-decoration:none;padding:0 12px;display:flex;align-items:center;border-bottom:3px solid transparent}
.nav a:hover{color:#fff}.nav a.active{color:#fff;border-bottom-color:#60a5fa}
.study-chip{margin-left:auto;color:#cbd5e1;font-size:13px}
.page{padding:18px 24px;max-width:1560px;margin:0 auto}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(15,23,42,.08);padding:14px 16px;margin-bottom:16px}
.card h3{margin:0 0 10px;font-size:15px;font-weight:600;color:#334155}
.card h3 small{font-weight:400;color:#64748b;margin-left:8px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}
.grid3{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:16px}
.row{display:flex;gap:14px;align-items:flex-end;flex-wrap:wrap}
.field{display:flex;flex-direction:column;gap:4px;min-width:160px}
.field label,.label{font-size:12px;color:#64748b;font-weight:600;text-transform:uppercase;letter-spacing:.3px}
.notice{padding:12px 14px;border-radius:6px;background:#eff6ff;border:1px solid #bfdbfe;margin:8px 0}
.notice.error{background:#fef2f2;border-color:#fca5a5;color:#7f1d1d}
.notice.warn{background:#fffbeb;border-color:#fcd34d;color:#78350f}
.kpis{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.kpi{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(15,23,42,.08);padding:10px 16px;min-width:140px}
.kpi .v{font-size:20px;font-weight:600}.kpi .k{font-size:12px;color:#64748b}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;font-size:12px;font-weight:600;background:#e2e8f0}
.badge.completed,.badge.finished{background:#dcfce7;color:#166534}.badge.running{background:#dbeafe;color:#1e40af}
.badge.pruned{background:#f1f5f9;color:#64748b}.badge.failed,.badge.error,.badge.unreadable{background:#fee2e2;color:#991b1b}
.cmd{font-family:ui-monospace,Menlo,Consolas,monospace;background:#0f172a;color:#e2e8f0;padding:10px 12px;border-radius:6px;display:flex;align-items:center;gap:12px;justify-content:space-between;font-size:13px;overflow-x:auto}
.cmd button{background:none;border:none;color:#93c5fd;cursor:pointer;font-size:16px}
pre.config{background:#f8fafc;border:1px solid #e2e8f0;border-radius:6px;padding:10px;font-size:12px;max-height:420px;overflow:auto;margin:0}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
.tiles:has(.tile.wide){grid-template-columns:repeat(auto-fill,minmax(330px,1fr))}
.badge.sanity-passed{background:#dcfce7;color:#166534}.badge.sanity-failed,.badge.sanity-error{background:#fee2e2;color:#991b1b}.badge.sanity-inconclusive{background:#fef3c7;color:#92400e}
.sanity-list{margin:0;padding-left:18px}.sanity-list li{margin-bottom:6px}
.layer-note code{font-size:11px;word-break:break-all}
.tile{background:#fff;border-radius:6px;box-shadow:0 1px 2px rgba(15,23,42,.1);padding:6px;font-size:12px}
.tile.right{border-top:3px solid #16a34a}.tile.wrong{border-top:3px solid #dc2626}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 2px;vertical-align:middle}
.tile img{width:100%;image-rendering:pixelated;border-radius:4px;display:block;background:#fff}
.tile .cap{margin-top:4px;line-height:1.35}.tile .id{color:#64748b;font-family:ui-monospace,monospace;font-size:11px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;direction:rtl;text-align:left}
.ok{color:#15803d;font-weight:600}.bad{color:#b91c1c;font-weight:600}
.pop{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr) minmax(0,2fr);gap:10px;text-align:center;font-size:12px;color:#475569;align-items:end}
.pop img{width:100%;max-height:190px;object-fit:contain;image-rendering:pixelated;border-radius:4px}
.mosaics{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:12px}
.mosaics img{width:100%;border-radius:4px;image-rendering:pixelated}
.muted{color:#64748b}
a{color:#2563eb}
.dash-table-container .dash-spreadsheet-container .dash-spreadsheet-inner th{font-weight:600}
.dash-table-container .dash-spreadsheet-container .dash-spreadsheet-inner td .dash-cell-value p{margin:0}
.pager{display:flex;gap:10px;align-items:center;margin:10px 0}
.pager button{padding:4px 12px;border:1px solid #cbd5e1;border-radius:4px;background:#fff;cursor:pointer}
"""
