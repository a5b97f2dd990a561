"""Minimal headless client for the Streamlit 1.67 websocket protocol.

It drives one app session per :class:`StreamlitSession` without a browser, so a
load test can run dozens of sessions from a single process.  The only
dependencies are ``websocket-client`` and the protobuf classes that ship with
the installed ``streamlit`` package (``streamlit.proto``).

Protocol summary (as implemented by streamlit 1.67, Starlette/uvicorn server):

* Endpoint: ``ws://HOST:PORT[/baseUrlPath]/_stcore/stream``; binary frames only.
  Every server frame is one serialized ``ForwardMsg``; every client frame one
  ``BackMsg``.
* No header is required.  The browser sends ``Sec-WebSocket-Protocol:
  streamlit, <xsrf token>, <session id to resume>``; the XSRF token only gates
  reading the auth cookie (``st.user``), and a missing ``Origin`` or a
  same-origin one is accepted.  We send just the ``streamlit`` subprotocol.
* Connecting does *not* run the script.  The client requests every run
  (including the first "page load") with ``BackMsg.rerun_script`` carrying a
  ``ClientState``: ``widget_states`` (the complete widget state, like a browser),
  ``page_script_hash`` / ``page_name`` (page selection), ``query_string`` and
  ``context_info``.
* A run is framed by ``ForwardMsg.new_session`` (run start; carries
  ``metadata.run.script_run_id``) and ``ForwardMsg.script_finished``.
  ``FINISHED_EARLY_FOR_RERUN`` is *not* the end: ``st.rerun()`` inside the
  script is followed by another ``new_session`` and more deltas.
* Widget ids look like ``$$ID-<hash>-<user key>`` (``-None`` without a key);
  the hash covers the page (``active_script_hash``), so the same keyed widget
  on two pages has two ids.  The ids are read from the ``id`` field of the
  widget elements the server sends.
"""

from __future__ import annotations

import datetime as _dt
import json
import queue
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterable

import websocket  # websocket-client

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

__all__ = [
    "StreamlitSession",
    "RunResult",
    "StreamlitClientError",
    "ConnectionClosedError",
    "RunTimeoutError",
    "wait_for_health",
]

_ID_PREFIX = "$$ID"

# script_finished statuses that end a run requested by the client.
_TERMINAL_STATUSES = {
    ForwardMsg.FINISHED_SUCCESSFULLY,
    ForwardMsg.FINISHED_WITH_COMPILE_ERROR,
    ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY,
}

# Widgets whose state is a one-shot trigger (sent only for the run that "clicks").
_TRIGGER_KINDS = {"button", "download_button"}
# Widgets whose state is a list (a slider shows [v] or [lo, hi]).
_LIST_KINDS = {"slider", "multiselect", "date_input", "date_time_input", "button_group"}


class StreamlitClientError(RuntimeError):
    """Base class for client errors."""


class ConnectionClosedError(StreamlitClientError):
    """The websocket was closed (by the server or because of an error)."""


class RunTimeoutError(StreamlitClientError, TimeoutError):
    """A run did not finish in time.  The session is unusable afterwards."""


def user_key_from_widget_id(widget_id: str) -> str | None:
    """Return the user ``key=`` part of a widget id, or None for unkeyed widgets."""
    if not widget_id.startswith(_ID_PREFIX):
        return None
    key = widget_id.split("-", maxsplit=2)[-1]
    return None if key == "None" else key


def wait_for_health(base_url: str, timeout: float = 60.0) -> None:
    """Block until ``GET {base_url}/_stcore/health`` answers ``ok``."""
    url = base_url.rstrip("/") + "/_stcore/health"
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200 and resp.read().strip() == b"ok":
                    return
        except Exception as e:  # noqa: BLE001 - server not up yet
            last_err = e
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 'ok' within {timeout}s ({last_err!r})")


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass
class RunResult:
    """What one requested run produced.

    ``elements`` is every ``Element`` delta received during the run, in arrival
    order (a placeholder updated three times appears three times).  ``texts``,
    ``exceptions`` and ``widget_ids`` describe the *final* screen: the last
    element written at each delta path, in display order -- what a browser
    shows once the run is over.  If the script called ``st.rerun()``, only the
    last script pass counts (``script_passes`` tells how many there were).
    """

    elements: list = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    widget_ids: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    status: str = ""  # ForwardMsg.ScriptFinishedStatus name
    page_script_hash: str = ""
    page: str = ""  # url path of the page shown ("" = default page)
    page_not_found: bool = False
    script_passes: int = 0
    final_elements: dict[tuple[int, ...], Any] = field(default_factory=dict)
    messages: list = field(default_factory=list)  # raw ForwardMsgs of the run

    @property
    def text(self) -> str:
        """All ``texts`` joined by newlines."""
        return "\n".join(self.texts)

    def find_text(self, substring: str) -> bool:
        """True if any text payload of the final screen contains ``substring``."""
        return any(substring in t for t in self.texts)

    def texts_matching(self, substring: str) -> list[str]:
        return [t for t in self.texts if substring in t]


def element_texts(el: Any) -> list[str]:
    """Text-like payloads of one ``Element`` protobuf."""
    kind = el.WhichOneof("type")
    if kind is None:
        return []
    sub = getattr(el, kind)
    if kind in ("markdown", "text", "heading", "json", "html", "toast"):
        return [sub.body]
    if kind == "code":
        return [sub.code_text]
    if kind == "bidi_component":   # a components v2 element: the JSON data it was given
        return [sub.json if sub.WhichOneof("data") == "json" else sub.mixed.json]
    if kind == "alert":
        return [t for t in (sub.title, sub.body) if t]
    if kind == "exception":
        return [f"{sub.type}: {sub.message}" if sub.type else sub.message]
    if kind == "metric":
        return [" ".join(t for t in (sub.label, sub.body, sub.delta) if t)]
    if kind in ("spinner", "progress"):
        return [sub.text] if sub.text else []
    return []


def _element_exception(el: Any) -> str | None:
    kind = el.WhichOneof("type")
    if kind == "exception" and not el.exception.is_warning:
        # With client.showErrorDetails="none" the type is empty and the message
        # is a generic "This app has encountered an error..." text.
        exc = el.exception
        return f"{exc.type}: {exc.message}" if exc.type else exc.message
    if kind == "alert" and el.alert.format == el.alert.ERROR:
        return f"st.error: {el.alert.body}"
    return None


# --------------------------------------------------------------------------
# Widget value helpers
# --------------------------------------------------------------------------

_MISSING = object()


def _opt(msg: Any, name: str) -> Any:
    """Field value, or None when an optional (presence-tracked) field is unset."""
    fd = msg.DESCRIPTOR.fields_by_name[name]
    if fd.has_presence and not msg.HasField(name):
        return None
    return getattr(msg, name)


def _displayed_value(kind: str, w: Any) -> Any:
    """The value a browser would show for a freshly rendered widget proto.

    Uses the server-pushed value when ``set_value`` is true, else the default.
    Returns ``_MISSING`` when we do not model this widget (no state is sent) and
    None when the widget is empty.
    """
    set_value = getattr(w, "set_value", False)
    if kind in ("checkbox",):
        return w.value if set_value else w.default
    if kind in ("text_input", "text_area", "color_picker", "time_input", "number_input"):
        return _opt(w, "value") if set_value else _opt(w, "default")
    if kind == "slider":
        if w.type == w.SELECT_SLIDER or len(w.options):
            if set_value:
                return list(w.raw_value)
            return [w.options[int(i)] for i in w.default if 0 <= int(i) < len(w.options)]
        return list(w.value if set_value else w.default)
    if kind in ("selectbox", "radio"):
        if set_value:
            return _opt(w, "raw_value")
        idx = _opt(w, "default")
        return w.options[idx] if idx is not None and 0 <= idx < len(w.options) else None
    if kind == "multiselect":
        if set_value:
            return list(w.raw_values)
        return [w.options[i] for i in w.default if 0 <= i < len(w.options)]
    if kind in ("date_input", "date_time_input"):
        return list(w.value if set_value else w.default)
    if kind == "pagination":
        return w.value if set_value else w.default
    return _MISSING


def _to_str(v: Any) -> str:
    if isinstance(v, (_dt.date, _dt.datetime, _dt.time)):
        return v.isoformat()
    return v if isinstance(v, str) else str(v)


def _as_list(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _fill_widget_state(ws: WidgetState, kind: str | None, value: Any, proto: Any) -> bool:
    """Encode ``value`` into ``ws`` for a widget of element type ``kind``.

    Returns False when nothing should be sent (e.g. an un-clicked button).
    """
    if value is None:
        return False
    if kind in _TRIGGER_KINDS:
        if not value:
            return False
        ws.trigger_value = True
    elif kind == "chat_input":
        ws.chat_input_value.data = _to_str(value)
    elif kind == "menu_button":
        ws.string_trigger_value.data = _to_str(value)
    elif kind in ("text_input", "text_area", "color_picker", "time_input", "selectbox", "radio"):
        ws.string_value = _to_str(value)
    elif kind == "checkbox":
        ws.bool_value = bool(value)
    elif kind == "number_input":
        ws.double_value = float(value)
    elif kind == "pagination":
        ws.int_value = int(value)
    elif kind == "slider":
        if proto is not None and (proto.type == proto.SELECT_SLIDER or len(proto.options)):
            ws.string_array_value.data[:] = [_to_str(v) for v in _as_list(value)]
        else:
            ws.double_array_value.data[:] = [float(v) for v in _as_list(value)]
    elif kind in ("multiselect", "date_input", "date_time_input", "button_group"):
        ws.string_array_value.data[:] = [_to_str(v) for v in _as_list(value)]
    else:  # unknown widget type: infer the wire type from the Python value
        if isinstance(value, bool):
            ws.bool_value = value
        elif isinstance(value, int):
            ws.int_value = value
        elif isinstance(value, float):
            ws.double_value = value
        elif isinstance(value, str):
            ws.string_value = value
        elif isinstance(value, (list, tuple)):
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                ws.double_array_value.data[:] = [float(v) for v in value]
            else:
                ws.string_array_value.data[:] = [_to_str(v) for v in value]
        elif isinstance(value, dict):
            ws.json_value = json.dumps(value)
        else:
            ws.string_value = _to_str(value)
    return True


# --------------------------------------------------------------------------
# Session
# --------------------------------------------------------------------------

_CLOSED = object()  # reader-thread sentinel


class StreamlitSession:
    """One browser-less app session over the Streamlit websocket.

    Parameters
    ----------
    base_url:
        ``http(s)://host:port[/baseUrlPath]`` of the app.
    page:
        URL path of a multipage (``st.navigation`` / ``st.Page(url_path=...)``)
        page; ``""`` selects the default page.
    timeout:
        Connect timeout and default per-run timeout (seconds).
    query_string:
        Query string (without ``?``) the app sees in ``st.query_params``.
    headers:
        Extra handshake headers, e.g. ``{"Cookie": "route=..."}`` for a proxy's session affinity.

    The constructor only connects; call :meth:`run` to load the page (a browser
    does that right after connecting).  Not thread-safe: use one session per
    thread (sessions are independent, so many threads may each own one).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8501",
        page: str = "",
        timeout: float = 60,
        query_string: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.page = page.strip("/")
        self.timeout = timeout
        self.query_string = query_string
        self.session_id: str = ""
        self.pages: dict[str, str] = {}  # url path -> page_script_hash (from Navigation)
        self.last_result: RunResult | None = None
        self.runs = 0

        self._page_hash = ""  # page_script_hash of the page currently shown
        self._states: dict[str, Any] = {}  # widget id -> displayed value
        self._kinds: dict[str, str] = {}  # widget id -> element type
        self._protos: dict[str, Any] = {}  # widget id -> latest widget proto
        self._key_to_id: dict[str, str] = {}  # user key -> widget id (last run)
        self._label_to_ids: dict[str, list[str]] = {}
        self._broken: str | None = None
        self._closed = False

        u = urllib.parse.urlsplit(self.base_url)
        scheme = "wss" if u.scheme == "https" else "ws"
        self.ws_url = f"{scheme}://{u.netloc}{u.path.rstrip('/')}/_stcore/stream"
        self._inbox: queue.Queue = queue.Queue()
        self._ws = websocket.create_connection(
            self.ws_url, timeout=timeout, subprotocols=["streamlit"],
            header=[f"{k}: {v}" for k, v in (headers or {}).items()],
        )
        # the handshake's response headers (a proxy may say there which replica answered)
        self.handshake_headers: dict[str, str] = dict(self._ws.getheaders() or {})
        # Reads happen on a daemon thread so that server pings are answered
        # even while the caller is idle between runs.
        self._ws.settimeout(None)
        self._reader = threading.Thread(
            target=self._read_loop, name=f"st-client-{id(self):x}", daemon=True
        )
        self._reader.start()

    # -- context manager -------------------------------------------------
    def __enter__(self) -> "StreamlitSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the websocket (the server then ends the session).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Only the reader thread reads: send our close frame and let it see the
        # server's reply, then drop the socket.
        try:
            self._ws.send_close()
        except Exception:  # noqa: BLE001 - already closed
            pass
        self._reader.join(timeout=5)
        try:
            self._ws.shutdown()
        except Exception:  # noqa: BLE001
            pass
        self._reader.join(timeout=1)

    # -- public API -------------------------------------------------------
    @property
    def widget_values(self) -> dict[str, Any]:
        """Current widget state as the client would send it, by user key (or id)."""
        out = {}
        for wid, v in self._states.items():
            out[user_key_from_widget_id(wid) or wid] = v
        return out

    def run(
        self, widgets: dict[str, Any] | None = None, timeout: float | None = None
    ) -> RunResult:
        """Request a rerun with ``widgets`` changed and wait for it to finish.

        ``widgets`` maps a widget's user ``key`` (or its full ``$$ID-...`` id,
        or its label when unique) to the new value; buttons take ``True``.
        The values are merged into the session's widget state (defaults and
        values set by the server included), and the complete state is sent,
        as a browser does.  Keys must belong to widgets rendered by the
        previous run, so call ``run()`` once before setting widgets.
        """
        return self._rerun(widgets or {}, timeout)

    def switch_page(
        self, page: str, widgets: dict[str, Any] | None = None, timeout: float | None = None
    ) -> RunResult:
        """Navigate to another ``st.navigation`` page (by URL path; "" = default).

        Like clicking a nav link: the current widget state is sent along (so
        widgets shared by all pages keep their values) and the page is chosen
        by its ``page_script_hash`` when known, else by ``page_name``.
        ``widgets`` can only name widgets rendered by the previous run.
        """
        self.page = page.strip("/")
        self._page_hash = self.pages.get(self.page, "")
        return self._rerun(widgets or {}, timeout)

    # -- internals --------------------------------------------------------
    def _read_loop(self) -> None:
        try:
            while True:
                opcode, data = self._ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                if opcode != websocket.ABNF.OPCODE_BINARY:
                    continue
                msg = ForwardMsg()
                msg.ParseFromString(data)
                self._inbox.put(msg)
        except Exception as e:  # noqa: BLE001 - closed or broken socket
            self._inbox.put((_CLOSED, e))
            return
        self._inbox.put((_CLOSED, None))

    def _resolve_widget(self, key: str) -> str:
        if key in self._key_to_id:
            return self._key_to_id[key]
        if key.startswith(_ID_PREFIX) and key in self._kinds:
            return key
        ids = self._label_to_ids.get(key, [])
        if len(ids) == 1:
            return ids[0]
        known = sorted(self._key_to_id)
        hint = "" if self.runs else " (call run() once first to load the page)"
        raise KeyError(
            f"unknown widget {key!r}{hint}; keyed widgets on the current page: {known}"
        )

    def _build_back_msg(self, overrides: dict[str, Any]) -> BackMsg:
        msg = BackMsg()
        cs = msg.rerun_script
        cs.query_string = self.query_string
        cs.page_script_hash = self._page_hash
        cs.page_name = self.page
        ctx = cs.context_info
        ctx.timezone = "UTC"
        ctx.timezone_offset = 0
        ctx.locale = "en-US"
        ctx.url = f"{self.base_url}/{self.page}" + (
            f"?{self.query_string}" if self.query_string else ""
        )
        ctx.is_embedded = False

        values = {wid: v for wid, v in self._states.items()}
        values.update(overrides)
        for wid, value in values.items():
            kind = self._kinds.get(wid)
            ws = WidgetState(id=wid)
            if _fill_widget_state(ws, kind, value, self._protos.get(wid)):
                cs.widget_states.widgets.append(ws)
        return msg

    def _rerun(self, widgets: dict[str, Any], timeout: float | None) -> RunResult:
        if self._broken:
            raise StreamlitClientError(f"session unusable: {self._broken}")
        overrides = {self._resolve_widget(k): v for k, v in widgets.items()}
        # Drop what arrived between runs (session_status_changed, acks...).
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple) and item and item[0] is _CLOSED:
                self._broken = f"connection closed ({item[1]!r})"
                raise ConnectionClosedError(self._broken)

        back = self._build_back_msg(overrides)
        # The new values are now what the "browser" shows.
        for wid, value in overrides.items():
            if self._kinds.get(wid) in _TRIGGER_KINDS:
                continue
            if value is None:
                self._states.pop(wid, None)
            elif self._kinds.get(wid) in _LIST_KINDS:
                self._states[wid] = _as_list(value)
            else:
                self._states[wid] = value
        timeout = self.timeout if timeout is None else timeout
        t0 = time.perf_counter()
        try:
            self._ws.send_binary(back.SerializeToString())
        except Exception as e:
            self._broken = f"send failed ({e!r})"
            raise ConnectionClosedError(self._broken) from e

        res = RunResult()
        run_id: str | None = None
        compile_errors: list[str] = []
        nav_hash = ""
        nav_pages: dict[str, str] = {}
        ns_pages: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._broken = "run timed out"
                raise RunTimeoutError(f"run did not finish within {timeout}s")
            try:
                item = self._inbox.get(timeout=remaining)
            except queue.Empty:
                continue
            if isinstance(item, tuple) and item and item[0] is _CLOSED:
                self._broken = f"connection closed ({item[1]!r})"
                raise ConnectionClosedError(self._broken)
            msg: ForwardMsg = item
            res.messages.append(msg)
            mtype = msg.WhichOneof("type")
            if mtype == "new_session":
                # Start of a script pass (another one follows st.rerun()).
                run_id = msg.metadata.run.script_run_id
                res.script_passes += 1
                res.final_elements = {}
                compile_errors = []
                ns = msg.new_session
                if ns.initialize.session_id:
                    self.session_id = ns.initialize.session_id
                res.page_script_hash = ns.page_script_hash
                ns_pages = {p.url_pathname: p.page_script_hash for p in ns.app_pages}
            elif mtype == "delta":
                if run_id is None:
                    continue  # leftover from an earlier run
                kind = msg.delta.WhichOneof("type")
                if kind == "new_element":
                    el = msg.delta.new_element
                    res.elements.append(el)
                    res.final_elements[tuple(msg.metadata.delta_path)] = el
                elif kind == "add_block":
                    # A block replaces whatever was at its path (and below).
                    path = tuple(msg.metadata.delta_path)
                    for p in [p for p in res.final_elements if p[: len(path)] == path]:
                        del res.final_elements[p]
            elif mtype == "navigation":
                # st.navigation: the authoritative page list and current page.
                nav = msg.navigation
                nav_pages = {}
                for p in nav.app_pages:
                    if p.external_url:
                        continue
                    nav_pages[p.url_pathname] = p.page_script_hash
                    if p.is_default:  # the default page is served at "/"
                        nav_pages.setdefault("", p.page_script_hash)
                nav_hash = nav.page_script_hash
            elif mtype == "page_not_found":
                res.page_not_found = True
            elif mtype == "session_event":
                ev = msg.session_event
                if ev.WhichOneof("type") == "script_compilation_exception":
                    exc = ev.script_compilation_exception
                    compile_errors.append(
                        f"{exc.type}: {exc.message}" if exc.type else exc.message
                    )
            elif mtype == "script_finished":
                if run_id is None:
                    continue
                msg_run = msg.metadata.run.script_run_id
                if msg_run and msg_run != run_id:
                    continue
                if msg.script_finished in _TERMINAL_STATUSES:
                    res.status = ForwardMsg.ScriptFinishedStatus.Name(msg.script_finished)
                    break
                # FINISHED_EARLY_FOR_RERUN: st.rerun(); the next pass follows.
        res.duration_s = time.perf_counter() - t0
        if nav_hash:
            res.page_script_hash = nav_hash
        self._page_hash = res.page_script_hash
        if nav_pages:
            self.pages = nav_pages
            # Follow the server's choice (e.g. default page after page_not_found),
            # as the browser does by rewriting its URL.
            paths = [u for u, h in nav_pages.items() if h == nav_hash]
            if paths and self.page not in paths:
                self.page = "" if "" in paths else paths[0]
        elif ns_pages:
            self.pages = ns_pages
        res.page = self.page
        self._finish(res, compile_errors)
        self.runs += 1
        self.last_result = res
        return res

    def _finish(self, res: RunResult, compile_errors: list[str]) -> None:
        res.final_elements = dict(sorted(res.final_elements.items()))
        active: dict[str, tuple[str, Any]] = {}
        for el in res.final_elements.values():
            res.texts.extend(element_texts(el))
            err = _element_exception(el)
            if err:
                res.exceptions.append(err)
            kind = el.WhichOneof("type")
            sub = getattr(el, kind) if kind else None
            wid = getattr(sub, "id", "") if sub is not None else ""
            if isinstance(wid, str) and wid.startswith(_ID_PREFIX):
                active[wid] = (kind, sub)
        res.exceptions.extend(compile_errors)

        # Like the browser's widget manager: remember what each rendered widget
        # shows, and forget widgets that are no longer on screen.
        if res.status == "FINISHED_FRAGMENT_RUN_SUCCESSFULLY":
            return  # partial rerender; keep the rest of the state
        new_states: dict[str, Any] = {}
        self._key_to_id = {}
        self._label_to_ids = {}
        self._kinds = {}
        self._protos = {}
        for wid, (kind, sub) in active.items():
            self._kinds[wid] = kind
            self._protos[wid] = sub
            label = getattr(sub, "label", "")
            if label:
                self._label_to_ids.setdefault(label, []).append(wid)
            key = user_key_from_widget_id(wid)
            if key is not None:
                self._key_to_id[key] = wid
                res.widget_ids[key] = wid
            if kind in _TRIGGER_KINDS:
                continue  # triggers are reset after every run
            shown = _displayed_value(kind, sub)
            if getattr(sub, "set_value", False) or wid not in self._states:
                if shown is not _MISSING and shown is not None:
                    new_states[wid] = shown
            else:
                new_states[wid] = self._states[wid]
        self._states = new_states
