"""In-process fake of the Telegram Bot API for end-to-end tests.

A real aiogram bot talks to :class:`FakeBotAPI` over HTTP on 127.0.0.1 via
``TelegramAPIServer.from_base(url)``. The fake mirrors api.telegram.org's response
envelopes, status codes and error descriptions for the methods the bot uses, records
every call, and lets tests push updates (long polling) and inject failures.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import itertools
import json
import mimetypes
import re
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

from .fake_webhook import Webhook

Params = dict[str, Any]
_Handler = Callable[[Params], Awaitable[Any]]

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup of"
    " the submitted message are exactly the same as a current content and reply markup of the"
    " message"
)
# Form fields that must stay strings; every other form field is JSON-decoded when possible.
_STR_PARAMS = frozenset(
    {"text", "caption", "parse_mode", "file_id", "callback_query_id", "action", "language_code"}
    | {"inline_message_id", "business_connection_id", "message_effect_id", "url", "file_name"}
    | {"title", "description", "payload", "currency", "provider_token", "start_parameter"}
    | {"pre_checkout_query_id", "error_message", "telegram_payment_charge_id"}
)
# Telegram's answer to a query that was answered already, timed out or never existed.
_QUERY_INVALID = "query is too old and response timeout expired or query ID is invalid"
#: Seconds Telegram waits for the answer to a pre-checkout query before it cancels the payment.
PRE_CHECKOUT_TIMEOUT = 10.0
_HTML_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a"}
    | {"code", "pre", "blockquote", "tg-emoji"}
)
_TAG_RE = re.compile(r"<(/?)([^\s<>/]*)([^<>]*)(>?)")  # any "<...", closed by ">" or not


@dataclass(frozen=True)
class Call:
    """One recorded API request; ``at`` is ``time.monotonic()`` on arrival."""

    method: str
    params: Params
    at: float


@dataclass(frozen=True)
class Upload:
    """A multipart file part; replaces ``attach://...`` values in recorded params."""

    filename: str
    data: bytes
    content_type: str


@dataclass
class SentDocument:
    """A document the bot sent: original filename, exact bytes, raw caption."""

    filename: str
    data: bytes
    caption: str | None


@dataclass
class SentMessage:
    """Current state of a bot message; ``text`` is raw (as sent, markup included)."""

    message_id: int
    chat_id: int
    text: str | None
    edits: list[str] = field(default_factory=list)  # previous texts, oldest first
    document: SentDocument | None = None
    reply_to: int | None = None
    deleted: bool = False
    reply_markup: Any = None
    #: For sendInvoice: title, description, payload, currency and prices as sent.
    invoice: Params | None = None


@dataclass(frozen=True)
class QueryAnswer:
    """The bot's answer to a callback or pre-checkout query, ``delay`` s after it was pushed."""

    params: Params
    delay: float


@dataclass
class _Query:
    kind: str  # callback_query or pre_checkout_query
    pushed_at: float
    answer: QueryAnswer | None = None


@dataclass
class _Charge:
    user_id: int
    total_amount: int
    refunded: bool = False


@dataclass
class _File:
    data: bytes | None  # None: referenced only (send_voice_ref), not downloadable
    size: int
    unique_id: str
    path: str


class ApiError(Exception):
    """Raised inside handlers; becomes a Telegram-shaped error response."""

    def __init__(self, status: int, description: str, parameters: Params | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.parameters = status, description, parameters


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


def _error_response(err: ApiError) -> web.Response:
    body: Params = {"ok": False, "error_code": err.status, "description": err.description}
    if err.parameters:
        body["parameters"] = err.parameters
    return web.json_response(body, status=err.status)


def _decode(key: str, value: str) -> Any:
    if key in _STR_PARAMS or value.startswith("attach://"):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def html_to_plain(text: str) -> str:
    """Validate Telegram HTML markup like api.telegram.org does; return the visible text."""
    stack: list[str] = []
    for m in _TAG_RE.finditer(text):
        name, where = m[2].lower(), f"at byte offset {len(text[: m.start()].encode())}"
        if not m[4] or name not in _HTML_TAGS:
            raise _bad(f'can\'t parse entities: Unsupported start tag "{name}" {where}')
        if not m[1]:
            stack.append(name)
        elif not stack or stack.pop() != name:
            raise _bad(f'can\'t parse entities: Unmatched end tag {where}, found "</{name}>"')
    if stack:
        raise _bad(f"can't parse entities: Can't find end tag for start tag \"{stack[-1]}\"")
    return html.unescape(_TAG_RE.sub("", text))


class FakeBotAPI:
    """Fake Bot API server. Use ``async with FakeBotAPI() as api`` or ``start()``/``stop()``.

    Test-side methods (``push_update``, ``send_*``, ``add_file``, ``fail_next``) are sync and
    must be called from the event loop thread that runs the server.
    """

    def __init__(
        self,
        token: str = "123456:TEST",
        *,
        bot_id: int | None = None,
        username: str = "voicebot_test_bot",
        first_name: str = "Voicebot",
        file_size_limit: int = 20 * 1024 * 1024,
    ) -> None:
        head = token.split(":", 1)[0]
        self.token = token
        self.bot_id = bot_id if bot_id is not None else int(head) if head.isdigit() else 123456
        self.username = username
        self.first_name = first_name
        self.file_size_limit = file_size_limit
        self.calls: list[Call] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._updates: list[Params] = []
        self._next_update_id = 1
        self._wakeup = asyncio.Event()
        self._last_msg_id: dict[int, int] = defaultdict(int)
        self._chat_msgs: dict[int, dict[int, Params]] = defaultdict(dict)  # live messages
        self._sent: dict[int, dict[int, SentMessage]] = defaultdict(dict)
        self._files: dict[str, _File] = {}
        self._by_path: dict[str, str] = {}
        self._file_seq = itertools.count(1)
        self._failures: dict[str, deque[ApiError]] = defaultdict(deque)
        self._commands: dict[tuple[str, str], list[Params]] = {}
        self._users: dict[int, tuple[str, str]] = {}
        self._queries: dict[str, _Query] = {}
        self._query_seq = itertools.count(1)
        self._charges: dict[str, _Charge] = {}
        self._held: dict[str, asyncio.Event] = {}
        self.webhook = Webhook(self)
        handlers: dict[str, _Handler] = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "setWebhook": self.webhook.set,
            "deleteWebhook": self.webhook.delete,
            "getWebhookInfo": self.webhook.info,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "deleteMessage": self._delete_message,
            "sendDocument": self._send_document,
            "sendChatAction": self._ok,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "getFile": self._get_file,
            "answerCallbackQuery": self._answer_callback_query,
            "sendInvoice": self._send_invoice,
            "answerPreCheckoutQuery": self._answer_pre_checkout_query,
            "refundStarPayment": self._refund_star_payment,
        }
        self._handlers = {name.lower(): (name, h) for name, h in handlers.items()}

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> str:
        """Bind 127.0.0.1 on a free port; return the base url ``http://127.0.0.1:PORT``."""
        if self._runner is not None:
            raise RuntimeError("FakeBotAPI already started")
        self._closing, self._wakeup = False, asyncio.Event()
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        """Release pending long polls (they answer ``[]``) and shut the server down."""
        self._closing = True
        self._wakeup.set()
        await self.webhook.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeBotAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- test-side API
    def fail_next(
        self,
        method: str,
        *,
        status: int = 500,
        retry_after: int | None = None,
        times: int = 1,
        description: str | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail (``retry_after`` implies 429)."""
        params: Params | None = None
        if retry_after is not None or status == 429:
            status, retry_after = 429, retry_after if retry_after is not None else 1
            params = {"retry_after": retry_after}
            default = f"Too Many Requests: retry after {retry_after}"
        elif status >= 500:
            default = HTTPStatus(status).phrase
        elif status == 403:
            default = "Forbidden: bot was blocked by the user"
        else:
            default = "Bad Request: injected failure"
        err = ApiError(status, description or default, params)
        self._failures[method.lower()].extend([err] * times)

    def hold(self, method: str) -> None:
        """Keep calls of ``method`` waiting (recorded, unanswered) until ``release(method)``."""
        self._held.setdefault(method.lower(), asyncio.Event())

    def release(self, method: str) -> None:
        """Answer the held calls of ``method``, and the later ones at once."""
        if (gate := self._held.pop(method.lower(), None)) is not None:
            gate.set()

    def add_file(self, data: bytes, *, file_path: str | None = None) -> tuple[str, str]:
        """Register downloadable bytes; return ``(file_id, file_unique_id)``.

        ``file_unique_id`` derives from the content hash; ``file_id`` is new on every call.
        """
        return self._register(data, file_path or "documents/file_{n}")

    def push_update(self, update: Params) -> int:
        """Queue ``update`` (its ``update_id`` is assigned here) and wake long polls."""
        update_id = self._next_update_id
        self._next_update_id += 1
        self._updates.append({**update, "update_id": update_id})
        wakeup, self._wakeup = self._wakeup, asyncio.Event()
        wakeup.set()
        return update_id

    def set_user(
        self, user_id: int, *, first_name: str = "Test", language_code: str = "en"
    ) -> None:
        """Set the profile used by the ``send_*`` builders for ``user_id``."""
        self._users[user_id] = (first_name, language_code)

    def send_text(self, user_id: int, text: str) -> int:
        """Push a private text message from ``user_id``; return its message_id."""
        extra: Params = {}
        if text.startswith("/"):
            length = len(text.split(maxsplit=1)[0])
            extra["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        return self._user_message(user_id, text=text, **extra)

    def send_voice(
        self, user_id: int, data: bytes, *, duration: int, mime_type: str = "audio/ogg"
    ) -> int:
        """Push a voice message whose file (``data``) can be downloaded."""
        voice = {**self._media(data, "voice/file_{n}.oga"), "duration": duration}
        return self._user_message(user_id, voice={**voice, "mime_type": mime_type})

    def send_voice_ref(
        self, user_id: int, *, file_id: str, file_unique_id: str, file_size: int, duration: int
    ) -> int:
        """Push a voice message referencing a file with no bytes (e.g. claimed > 20 MB)."""
        path = f"voice/ref_{next(self._file_seq)}.oga"
        self._files.setdefault(file_id, _File(None, file_size, file_unique_id, path))
        voice = {"file_id": file_id, "file_unique_id": file_unique_id, "file_size": file_size}
        return self._user_message(
            user_id, voice={**voice, "duration": duration, "mime_type": "audio/ogg"}
        )

    def send_audio(
        self, user_id: int, data: bytes, *, duration: int, file_name: str, mime_type: str
    ) -> int:
        """Push an audio (music) message."""
        audio = {**self._media(data, "music/file_{n}" + _suffix(file_name)), "duration": duration}
        return self._user_message(
            user_id, audio={**audio, "file_name": file_name, "mime_type": mime_type}
        )

    def send_video_note(
        self, user_id: int, data: bytes, *, duration: int, length: int = 240
    ) -> int:
        """Push a round video note."""
        note = {**self._media(data, "video_notes/file_{n}.mp4"), "duration": duration}
        return self._user_message(user_id, video_note={**note, "length": length})

    def send_video(
        self,
        user_id: int,
        data: bytes,
        *,
        duration: int,
        file_name: str = "video.mp4",
        mime_type: str = "video/mp4",
        width: int = 640,
        height: int = 360,
    ) -> int:
        """Push a video message."""
        video = {**self._media(data, "videos/file_{n}" + _suffix(file_name)), "duration": duration}
        video |= {"file_name": file_name, "mime_type": mime_type, "width": width, "height": height}
        return self._user_message(user_id, video=video)

    def send_document(self, user_id: int, data: bytes, *, file_name: str, mime_type: str) -> int:
        """Push a document message."""
        doc = self._media(data, "documents/file_{n}" + _suffix(file_name))
        return self._user_message(
            user_id, document={**doc, "file_name": file_name, "mime_type": mime_type}
        )

    def send_voice_as(
        self,
        user_id: int,
        data: bytes,
        *,
        duration: int,
        file_unique_id: str,
        forward_from: int | None = None,
    ) -> int:
        """Push a voice message with a new file_id for ``data`` under ``file_unique_id``.

        A forwarded voice note keeps its ``file_unique_id`` (pass the original's and
        ``forward_from``, the original sender); the same audio uploaded again gets a new one.
        """
        n = next(self._file_seq)
        file_id, path = f"BQACAgI{n:06d}{file_unique_id}", f"voice/file_{n}.oga"
        self._files[file_id] = _File(data, len(data), file_unique_id, path)
        self._by_path[path] = file_id
        voice = {"file_id": file_id, "file_unique_id": file_unique_id, "file_size": len(data)}
        extra: Params = {}
        if forward_from is not None:
            sender = {"id": forward_from, "is_bot": False, "first_name": "Origin"}
            origin = {"type": "user", "date": int(time.time()), "sender_user": sender}
            extra["forward_origin"] = origin
        voice |= {"duration": duration, "mime_type": "audio/ogg"}
        return self._user_message(user_id, voice=voice, **extra)

    def press_button(
        self,
        user_id: int,
        message_id: int,
        data: str,
        *,
        chat_id: int | None = None,
        stale: bool = False,
    ) -> str:
        """Push the user's press of the inline button ``data`` on bot message ``message_id``.

        The message is in ``chat_id`` (default: the user's private chat; another chat stands
        for a group both are in). Returns the callback query id; raises ValueError when the
        message has no such button now (an edit without reply_markup removes it), unless
        ``stale``: the user's app still shows an older version of the message, with the button.
        """
        chat = user_id if chat_id is None else chat_id
        msg = self._chat_msgs[chat].get(message_id)
        rows = (msg or {}).get("reply_markup", {}).get("inline_keyboard", [])
        pressable = any(button.get("callback_data") == data for row in rows for button in row)
        if msg is None or not (pressable or stale):
            raise ValueError(f"message {message_id} in chat {chat} has no button {data!r}")
        query_id = self._new_query("callback_query")
        query = {"id": query_id, "from": self._from(user_id), "message": msg}
        query |= {"chat_instance": str(-user_id), "data": data}
        self.push_update({"callback_query": query})
        return query_id

    def pre_checkout(
        self, user_id: int, *, payload: str, total_amount: int, currency: str = "XTR"
    ) -> str:
        """Push the pre-checkout query Telegram sends when the user confirms a payment."""
        query_id = self._new_query("pre_checkout_query")
        query = {"id": query_id, "from": self._from(user_id), "currency": currency}
        query |= {"total_amount": total_amount, "invoice_payload": payload}
        self.push_update({"pre_checkout_query": query})
        return query_id

    def pay(
        self,
        user_id: int,
        *,
        payload: str,
        total_amount: int,
        charge_id: str,
        provider_charge_id: str = "",
    ) -> int:
        """Push the service message with ``successful_payment`` (in Stars); return its id.

        The charge is remembered, so that refundStarPayment can refund it once.
        """
        self._charges.setdefault(charge_id, _Charge(user_id, total_amount))
        payment = {"currency": "XTR", "total_amount": total_amount, "invoice_payload": payload}
        payment |= {
            "telegram_payment_charge_id": charge_id,
            "provider_payment_charge_id": provider_charge_id,
        }
        return self._user_message(user_id, successful_payment=payment)

    def redeliver(self, chat_id: int, message_id: int) -> int:
        """Push the user's message again as a new update, as Telegram does after a lost offset."""
        return self.push_update({"message": self._chat_msgs[chat_id][message_id]})

    # ----------------------------------------------------------------- assertions
    def query_answer(self, query_id: str) -> QueryAnswer | None:
        """The bot's answer to a callback or pre-checkout query, once it came."""
        query = self._queries.get(query_id)
        return query.answer if query is not None else None

    def refunded(self, charge_id: str) -> bool:
        """Whether the bot refunded the Stars payment ``charge_id``."""
        charge = self._charges.get(charge_id)
        return charge is not None and charge.refunded

    def calls_of(self, method: str) -> list[Call]:
        """Recorded calls of ``method`` (case-insensitive), oldest first."""
        return [c for c in self.calls if c.method.lower() == method.lower()]

    def messages(self, chat_id: int) -> list[SentMessage]:
        """Bot messages in ``chat_id`` by message_id, deleted ones included (flagged)."""
        return [self._sent[chat_id][k] for k in sorted(self._sent[chat_id])]

    @property
    def pending_updates(self) -> list[Params]:
        """Updates not yet confirmed by a getUpdates ``offset``."""
        return list(self._updates)

    def commands(self, *, scope: Params | None = None, language_code: str = "") -> list[Params]:
        """Commands currently set for ``scope`` (default scope) and ``language_code``."""
        return list(self._commands.get(_commands_key(scope, language_code), []))

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
        message: str = "",
    ) -> None:
        """Poll ``predicate`` until true; on timeout raise AssertionError listing recent calls."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                calls = [c for c in self.calls if c.method != "getUpdates"][-15:]
                recent = "\n".join(f"  {c.method} {_short(c.params)}" for c in calls)
                label = f" ({message})" if message else ""
                raise AssertionError(
                    f"condition not met within {timeout}s{label}; last API calls:\n"
                    f"{recent or '  <none>'}"
                )
            await asyncio.sleep(0.01)

    # ----------------------------------------------------------------- HTTP layer
    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error_response(ApiError(401, "Unauthorized"))
        raw_name = request.match_info["method"]
        name, handler = self._handlers.get(raw_name.lower(), (raw_name, None))
        params = await _read_params(request)
        await self._note_call(name, params)
        if failures := self._failures.get(name.lower()):
            return _error_response(failures.popleft())
        if handler is None:
            return _error_response(ApiError(404, "Not Found"))
        try:
            result = await handler(params)
        except ApiError as err:
            return _error_response(err)
        return web.json_response({"ok": True, "result": result})

    async def _note_call(self, name: str, params: Params) -> None:
        """Note a call of `name`, then keep it waiting while `name` is held (see `hold`)."""
        self.calls.append(Call(name, params, time.monotonic()))
        if (gate := self._held.get(name.lower())) is not None:
            await gate.wait()

    async def _download(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        await self._note_call("downloadFile", {"file_path": path})
        if request.match_info["token"] != self.token:
            return _error_response(ApiError(401, "Unauthorized"))
        entry = self._files.get(self._by_path.get(path, ""))
        if entry is None or entry.data is None:
            return _error_response(ApiError(404, "Not Found"))
        return web.Response(body=entry.data, content_type="application/octet-stream")

    # ----------------------------------------------------------------- methods
    async def _ok(self, p: Params) -> bool:
        return True

    async def _get_me(self, p: Params) -> Params:
        flags = ("can_join_groups", "can_read_all_group_messages", "supports_inline_queries")
        return self._bot_user() | dict.fromkeys(flags, False)

    async def _get_updates(self, p: Params) -> list[Params]:
        if self.webhook.url:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset, limit = int(p.get("offset") or 0), min(max(int(p.get("limit") or 100), 1), 100)
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(float(p.get("timeout") or 0), 0.0)
        while not self._updates and not self._closing:
            remaining, wakeup = deadline - loop.time(), self._wakeup
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except TimeoutError:
                break
        return self._updates[:limit]

    async def _send_message(self, p: Params) -> Params:
        chat_id, text = _int(p, "chat_id"), str(p.get("text") or "")
        plain = _plain(text, p.get("parse_mode"), TEXT_LIMIT, "message is too long")
        if not plain.strip():
            raise _bad("message text is empty")
        reply_to = self._reply_target(chat_id, p)
        msg = self._bot_message(chat_id, reply_to, p, text=plain)
        self._record(msg, text, reply_to, p)
        return msg

    async def _edit_message_text(self, p: Params) -> Params:
        chat_id, message_id = _int(p, "chat_id"), _int(p, "message_id")
        text = str(p.get("text") or "")
        sent = self._sent[chat_id].get(message_id)
        msg = self._chat_msgs[chat_id].get(message_id)
        if msg is None or sent is None:
            raise _bad("message to edit not found")
        if sent.text is None:
            raise _bad("there is no text in the message to edit")
        plain = _plain(text, p.get("parse_mode"), TEXT_LIMIT, "message is too long")
        if not plain.strip():
            raise _bad("message text is empty")
        markup = p.get("reply_markup")
        if text == sent.text and markup == sent.reply_markup:
            raise ApiError(400, _NOT_MODIFIED)
        sent.edits.append(sent.text)
        sent.text, sent.reply_markup = text, markup
        msg |= {"text": plain, "edit_date": int(time.time())}
        if markup is None:
            msg.pop("reply_markup", None)
        else:
            msg["reply_markup"] = markup
        return msg

    async def _delete_message(self, p: Params) -> bool:
        chat_id, message_id = _int(p, "chat_id"), _int(p, "message_id")
        if self._chat_msgs[chat_id].pop(message_id, None) is None:
            raise _bad("message to delete not found")
        if sent := self._sent[chat_id].get(message_id):
            sent.deleted = True
        return True

    async def _send_document(self, p: Params) -> Params:
        chat_id, doc = _int(p, "chat_id"), p.get("document")
        if isinstance(doc, Upload):
            filename, data = doc.filename, doc.data
        elif isinstance(doc, str) and (entry := self._files.get(doc)) and entry.data is not None:
            filename, data = entry.path.rsplit("/", 1)[-1], entry.data
        else:
            raise _bad("wrong file identifier/HTTP URL specified")
        caption = p.get("caption")
        reply_to = self._reply_target(chat_id, p)
        file_id, unique_id = self._register(data, "documents/file_{n}" + _suffix(filename))
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        document = {"file_id": file_id, "file_unique_id": unique_id, "file_name": filename}
        extra: Params = {"document": document | {"mime_type": mime, "file_size": len(data)}}
        if caption:
            limit, too_long = CAPTION_LIMIT, "message caption is too long"
            extra["caption"] = _plain(caption, p.get("parse_mode"), limit, too_long)
        msg = self._bot_message(chat_id, reply_to, p, **extra)
        document_sent = SentDocument(filename, data, caption)
        self._record(msg, None, reply_to, p, document=document_sent)
        return msg

    async def _answer_callback_query(self, p: Params) -> bool:
        self._answer_query("callback_query", p, ("text", "show_alert", "url", "cache_time"))
        return True

    async def _answer_pre_checkout_query(self, p: Params) -> bool:
        if not isinstance(p.get("ok"), bool):
            raise _bad("ok must be a boolean")
        if not p["ok"] and not str(p.get("error_message") or "").strip():
            raise _bad("error_message must be non-empty when ok is false")
        self._answer_query("pre_checkout_query", p, ("ok", "error_message"))
        return True

    async def _send_invoice(self, p: Params) -> Params:
        chat_id = _int(p, "chat_id")
        title, description = str(p.get("title") or ""), str(p.get("description") or "")
        payload, currency = str(p.get("payload") or ""), str(p.get("currency") or "")
        prices = p.get("prices")
        if not 1 <= len(title) <= 32:
            raise _bad("invoice title must be 1-32 characters")
        if not 1 <= len(description) <= 255:
            raise _bad("invoice description must be 1-255 characters")
        if not 1 <= len(payload.encode()) <= 128:
            raise _bad("INVOICE_PAYLOAD_INVALID")
        if not isinstance(prices, list) or not prices:
            raise _bad("prices must be a non-empty JSON array")
        amounts = [price.get("amount") for price in prices if isinstance(price, dict)]
        if len(amounts) != len(prices) or not all(isinstance(a, int) and a > 0 for a in amounts):
            raise _bad("CURRENCY_TOTAL_AMOUNT_INVALID")
        if currency == "XTR" and (len(prices) != 1 or p.get("provider_token")):
            # Stars invoices take exactly one price and no payment provider.
            raise _bad("CURRENCY_TOTAL_AMOUNT_INVALID" if len(prices) != 1 else "PROVIDER_INVALID")
        reply_to = self._reply_target(chat_id, p)
        invoice = {"title": title, "description": description, "currency": currency}
        invoice |= {"start_parameter": str(p.get("start_parameter") or "")}
        msg = self._bot_message(
            chat_id, reply_to, p, invoice=invoice | {"total_amount": sum(amounts)}
        )
        sent = {"title": title, "description": description, "payload": payload}
        self._record(
            msg, None, reply_to, p, invoice=sent | {"currency": currency, "prices": prices}
        )
        return msg

    async def _refund_star_payment(self, p: Params) -> bool:
        user_id, charge_id = _int(p, "user_id"), str(p.get("telegram_payment_charge_id") or "")
        charge = self._charges.get(charge_id)
        if charge is None or charge.user_id != user_id:
            raise _bad("CHARGE_NOT_FOUND")
        if charge.refunded:
            raise _bad("CHARGE_ALREADY_REFUNDED")
        charge.refunded = True
        return True

    async def _set_my_commands(self, p: Params) -> bool:
        commands = p.get("commands")
        if not isinstance(commands, list):
            raise _bad("commands must be a JSON array")
        scope = p.get("scope")
        # A chat scope needs a chat the bot can see: one its user has opened (written in).
        if (
            isinstance(scope, dict)
            and "chat_id" in scope
            and scope["chat_id"] not in self._chat_msgs
        ):
            raise _bad("chat not found")
        self._commands[_commands_key(scope, p.get("language_code", ""))] = commands
        return True

    async def _get_my_commands(self, p: Params) -> list[Params]:
        return self.commands(scope=p.get("scope"), language_code=p.get("language_code", ""))

    async def _delete_my_commands(self, p: Params) -> bool:
        self._commands.pop(_commands_key(p.get("scope"), p.get("language_code", "")), None)
        return True

    async def _get_file(self, p: Params) -> Params:
        file_id = str(p.get("file_id", ""))
        entry = self._files.get(file_id)
        if entry is None:
            raise _bad("invalid file_id")
        if entry.size > self.file_size_limit:
            raise _bad("file is too big")
        info = {"file_unique_id": entry.unique_id, "file_size": entry.size, "file_path": entry.path}
        return {"file_id": file_id} | info

    # ----------------------------------------------------------------- internals
    def _register(self, data: bytes, path_template: str) -> tuple[str, str]:
        n = next(self._file_seq)
        unique_id = "AgAD" + hashlib.sha256(data).hexdigest()[:16]
        file_id = f"BQACAgI{n:06d}{unique_id}"
        path = path_template.replace("{n}", str(n))
        self._files[file_id] = _File(data, len(data), unique_id, path)
        self._by_path[path] = file_id
        return file_id, unique_id

    def _media(self, data: bytes, path_template: str) -> Params:
        file_id, unique_id = self._register(data, path_template)
        return {"file_id": file_id, "file_unique_id": unique_id, "file_size": len(data)}

    def _next_message_id(self, chat_id: int) -> int:
        self._last_msg_id[chat_id] += 1
        return self._last_msg_id[chat_id]

    def _from(self, user_id: int) -> Params:
        first_name, lang = self._users.get(user_id, ("Test", "en"))
        return {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": lang}

    def _new_query(self, kind: str) -> str:
        query_id = f"{self.bot_id}{next(self._query_seq):010d}"
        self._queries[query_id] = _Query(kind, time.monotonic())
        return query_id

    def _answer_query(self, kind: str, p: Params, keys: tuple[str, ...]) -> None:
        """Record the answer; a second one, a late one or an unknown id fails as on Telegram."""
        query_id = str(p.get(f"{kind}_id") or "")
        query = self._queries.get(query_id)
        if query is None or query.kind != kind or query.answer is not None:
            raise _bad(_QUERY_INVALID)
        delay = time.monotonic() - query.pushed_at
        if kind == "pre_checkout_query" and delay > PRE_CHECKOUT_TIMEOUT:
            raise _bad(_QUERY_INVALID)
        query.answer = QueryAnswer({k: p[k] for k in keys if k in p}, delay)

    def _user_message(self, user_id: int, **content: Any) -> int:
        first_name, lang = self._users.get(user_id, ("Test", "en"))
        message_id = self._next_message_id(user_id)
        user = {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": lang}
        chat = {"id": user_id, "type": "private", "first_name": first_name}
        msg: Params = {"message_id": message_id, "from": user, "chat": chat}
        msg |= {"date": int(time.time()), **content}
        self._chat_msgs[user_id][message_id] = msg
        self.push_update({"message": msg})
        return message_id

    def _bot_user(self) -> Params:
        user = {"id": self.bot_id, "is_bot": True, "first_name": self.first_name}
        return user | {"username": self.username}

    def _bot_message(self, chat_id: int, reply_to: int | None, p: Params, **content: Any) -> Params:
        message_id = self._next_message_id(chat_id)
        chat = {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"}
        msg: Params = {"message_id": message_id, "from": self._bot_user(), "chat": chat}
        msg |= {"date": int(time.time()), **content}
        if reply_to is not None:
            replied = self._chat_msgs[chat_id][reply_to]
            msg["reply_to_message"] = {k: v for k, v in replied.items() if k != "reply_to_message"}
        if p.get("reply_markup") is not None:
            msg["reply_markup"] = p["reply_markup"]
        self._chat_msgs[chat_id][message_id] = msg
        return msg

    def _record(
        self, msg: Params, text: str | None, reply_to: int | None, p: Params, **kw: Any
    ) -> None:
        chat_id, message_id, markup = msg["chat"]["id"], msg["message_id"], p.get("reply_markup")
        self._sent[chat_id][message_id] = SentMessage(
            message_id, chat_id, text, reply_to=reply_to, reply_markup=markup, **kw
        )

    def _reply_target(self, chat_id: int, p: Params) -> int | None:
        rp = p.get("reply_parameters")
        if isinstance(rp, dict):
            target, allow = rp.get("message_id"), rp.get("allow_sending_without_reply")
        else:
            target, allow = p.get("reply_to_message_id"), p.get("allow_sending_without_reply")
        if target is None:
            return None
        if int(target) in self._chat_msgs[chat_id]:
            return int(target)
        if allow:
            return None
        raise _bad("message to be replied not found")


async def _read_params(request: web.Request) -> Params:
    """Parse query string, JSON, urlencoded or multipart bodies into typed params."""
    if request.content_type == "application/json" and request.can_read_body:
        body = await request.json()
        return dict(body) if isinstance(body, dict) else {}
    params: Params = {k: _decode(k, v) for k, v in request.query.items()}
    uploads: dict[str, Upload] = {}
    for key, value in (await request.post()).items():
        if isinstance(value, web.FileField):
            uploads[key] = Upload(value.filename, value.file.read(), value.content_type)
        else:
            params[key] = _decode(key, str(value))
    for key, value in list(params.items()):
        if isinstance(value, str) and value.startswith("attach://"):
            params[key] = uploads.pop(value.removeprefix("attach://"), value)
    return params | uploads


def _plain(text: str, parse_mode: Any, limit: int, too_long: str) -> str:
    """Visible text for ``parse_mode`` (only HTML is parsed); enforce Telegram's length limit."""
    plain = html_to_plain(text) if str(parse_mode).upper() == "HTML" else text
    if len(plain) > limit:
        raise _bad(too_long)
    return plain


def _int(p: Params, key: str) -> int:
    try:
        return int(p[key])
    except (KeyError, TypeError, ValueError):
        raise _bad(f"{key} is empty" if key not in p else "chat not found") from None


def _suffix(file_name: str) -> str:
    return "." + file_name.rsplit(".", 1)[1] if "." in file_name else ""


def _commands_key(scope: Any, language_code: Any) -> tuple[str, str]:
    return json.dumps(scope or {"type": "default"}, sort_keys=True), str(language_code or "")


def _short(params: Params) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return text if len(text) <= 160 else text[:157] + "..."
