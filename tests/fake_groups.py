"""Groups on the fake Bot API: group and forum messages, members, the bot added, removed, moved.

`GroupFakeBotAPI` is the fake of `fakes.py` plus what groups need, as api.telegram.org does it:
getChatMember answers by configured status; getMe says whether privacy mode hides group
messages; the bot joining or leaving comes as a `my_chat_member` update; a removed bot gets 403
for anything it sends there, and a group moved to a supergroup answers 400 with
`migrate_to_chat_id` (after its two service messages); `message_thread_id` must name a topic of
a forum, and is recorded per bot message.
"""

from __future__ import annotations

import re
import time
from typing import Any

from .fakes import ApiError, FakeBotAPI, Params, _bad, _Handler

#: Telegram's placeholder sender of anonymous group administrators' messages.
ANONYMOUS_ADMIN_BOT = {
    "id": 1087968824,
    "is_bot": True,
    "first_name": "Group",
    "username": "GroupAnonymousBot",
}
_ADMIN_RIGHTS = (
    "can_be_edited",
    "is_anonymous",
    "can_manage_chat",
    "can_delete_messages",
    "can_manage_video_chats",
    "can_restrict_members",
    "can_promote_members",
    "can_change_info",
    "can_invite_users",
    "can_post_stories",
    "can_edit_stories",
    "can_delete_stories",
    "can_send_welcome_messages",
)
_MENTION = re.compile(r"@\w+")
# Methods that name a chat and fail once the bot is out of it.
_CHAT_METHODS = ("sendMessage", "editMessageText", "sendDocument", "deleteMessage")


class GroupFakeBotAPI(FakeBotAPI):
    """The fake Bot API with groups, supergroups and forum topics."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: What getMe says: False is privacy mode on (the default of every new bot).
        self.can_read_all_group_messages = False
        self.groups: dict[int, Params] = {}
        self.topics: dict[int, set[int]] = {}
        self.members: dict[tuple[int, int], str] = {}
        #: The message_thread_id each bot message was sent with, by (chat, message id).
        self.threads: dict[tuple[int, int], int | None] = {}
        self._removed: dict[int, str] = {}
        self._migrated: dict[int, int] = {}
        self._handlers["getme"] = ("getMe", self._get_me_groups)
        self._handlers["getchatmember"] = ("getChatMember", self._get_chat_member)
        for name in _CHAT_METHODS:
            self._handlers[name.lower()] = (name, self._gated(self._handlers[name.lower()][1]))

    # ----------------------------------------------------------------- test-side API
    def add_group(
        self, chat_id: int, title: str, *, kind: str = "supergroup", topics: tuple[int, ...] = ()
    ) -> Params:
        """Create a group (`kind` group or supergroup); with `topics`, a forum with those topics."""
        chat: Params = {"id": chat_id, "type": kind, "title": title}
        if topics:
            chat["is_forum"] = True
            self.topics[chat_id] = set(topics)
        self.groups[chat_id] = chat
        return chat

    def set_member(self, chat_id: int, user_id: int, status: str) -> None:
        """What getChatMember says of `user_id` (the bot's id included) in the chat."""
        self.members[(chat_id, user_id)] = status

    def add_bot(self, chat_id: int, *, by: int, status: str = "member") -> int:
        """A member adds the bot to the group (as a member or an administrator)."""
        self._removed.pop(chat_id, None)
        self.set_member(chat_id, self.bot_id, status)
        return self._bot_membership(chat_id, by=by, old="left", new=status)

    def remove_bot(self, chat_id: int, *, by: int) -> int:
        """A member removes the bot (my_chat_member `kicked`); what it sends there is refused."""
        old = self.members.get((chat_id, self.bot_id), "member")
        self.set_member(chat_id, self.bot_id, "kicked")
        kind = self.groups[chat_id]["type"]
        self._removed[chat_id] = f"Forbidden: bot was kicked from the {kind} chat"
        return self._bot_membership(chat_id, by=by, old=old, new="kicked")

    def migrate(self, old_chat_id: int, new_chat_id: int, *, by: int) -> Params:
        """The group becomes a supergroup: a service message in each chat, then the old chat
        answers every call with 400 and `migrate_to_chat_id`. Returns the new chat."""
        old = self.groups[old_chat_id]
        new = self.add_group(new_chat_id, old["title"])
        for (chat_id, user_id), status in list(self.members.items()):
            if chat_id == old_chat_id:
                self.members[(new_chat_id, user_id)] = status
        self._group_message(old_chat_id, by, migrate_to_chat_id=new_chat_id)
        self._group_message(new_chat_id, by, migrate_from_chat_id=old_chat_id)
        self._migrated[old_chat_id] = new_chat_id
        return new

    def send_group_text(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        *,
        reply_to: int | None = None,
        thread_id: int | None = None,
        anonymous: bool = False,
    ) -> int:
        """A text in the group: commands at its start and @mentions get their entities."""
        entities: list[Params] = []
        if text.startswith("/"):
            length = len(text.split(maxsplit=1)[0])
            entities.append({"type": "bot_command", "offset": 0, "length": length})
        command_end = entities[0]["length"] if entities else 0  # "/cmd@bot" is no mention
        for found in _MENTION.finditer(text, command_end):
            entities.append({"type": "mention", "offset": found.start(), "length": len(found[0])})
        extra: Params = {"entities": entities} if entities else {}
        return self._group_message(
            chat_id,
            user_id,
            reply_to=reply_to,
            thread_id=thread_id,
            anonymous=anonymous,
            text=text,
            **extra,
        )

    def send_group_voice(
        self,
        chat_id: int,
        user_id: int,
        data: bytes,
        *,
        duration: int,
        thread_id: int | None = None,
        anonymous: bool = False,
    ) -> int:
        """A voice message in the group (`anonymous`: from an anonymous administrator)."""
        voice = {**self._media(data, "voice/file_{n}.oga"), "duration": duration}
        return self._group_message(
            chat_id,
            user_id,
            thread_id=thread_id,
            anonymous=anonymous,
            voice={**voice, "mime_type": "audio/ogg"},
        )

    def send_group_audio_file(
        self, chat_id: int, user_id: int, data: bytes, *, file_name: str = "talk.ogg"
    ) -> int:
        """An audio file sent as a document in the group."""
        doc = self._media(data, "documents/file_{n}.ogg")
        return self._group_message(
            chat_id, user_id, document={**doc, "file_name": file_name, "mime_type": "audio/ogg"}
        )

    # ----------------------------------------------------------------- methods
    async def _get_me_groups(self, p: Params) -> Params:
        flags = {"can_join_groups": True, "supports_inline_queries": False}
        return (
            self._bot_user()
            | flags
            | {"can_read_all_group_messages": self.can_read_all_group_messages}
        )

    async def _get_chat_member(self, p: Params) -> Params:
        chat_id, user_id = int(p["chat_id"]), int(p["user_id"])
        if chat_id not in self.groups:
            raise _bad("chat not found")
        self._check_open(chat_id)
        user = self._bot_user() if user_id == self.bot_id else self._from(user_id)
        return _member(user, self.members.get((chat_id, user_id), "member"))

    # ----------------------------------------------------------------- internals
    def _gated(self, handler: _Handler) -> _Handler:
        """`handler`, refused as Telegram does in a chat the bot left or that moved."""

        async def gated(p: Params) -> Any:
            chat_id = int(p.get("chat_id") or 0)
            self._check_open(chat_id)
            thread = p.get("message_thread_id")
            if thread is not None and int(thread) not in self.topics.get(chat_id, set()):
                raise _bad("message thread not found")
            result = await handler(p)
            if isinstance(result, dict) and "message_id" in result:
                if thread is not None:
                    result |= {"message_thread_id": int(thread), "is_topic_message": True}
                    self._chat_msgs[chat_id][result["message_id"]] = result
                key = (chat_id, int(result["message_id"]))
                self.threads.setdefault(key, int(thread) if thread is not None else None)
            return result

        return gated

    def _check_open(self, chat_id: int) -> None:
        if chat_id in self._migrated:
            raise ApiError(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": self._migrated[chat_id]},
            )
        if chat_id in self._removed:
            raise ApiError(403, self._removed[chat_id])

    def _bot_membership(self, chat_id: int, *, by: int, old: str, new: str) -> int:
        update = {
            "chat": self.groups[chat_id],
            "from": self._from(by),
            "date": int(time.time()),
            "old_chat_member": _member(self._bot_user(), old),
            "new_chat_member": _member(self._bot_user(), new),
        }
        return self.push_update({"my_chat_member": update})

    def _group_message(
        self,
        chat_id: int,
        user_id: int,
        *,
        reply_to: int | None = None,
        thread_id: int | None = None,
        anonymous: bool = False,
        **content: Any,
    ) -> int:
        chat = self.groups[chat_id]
        message_id = self._next_message_id(chat_id)
        sender = ANONYMOUS_ADMIN_BOT if anonymous else self._from(user_id)
        msg: Params = {"message_id": message_id, "from": sender, "chat": chat}
        msg |= {"date": int(time.time()), **content}
        if anonymous:
            msg["sender_chat"] = chat  # an anonymous administrator writes as the group
        if thread_id is not None:
            msg |= {"message_thread_id": thread_id, "is_topic_message": True}
        if reply_to is not None:
            replied = self._chat_msgs[chat_id][reply_to]
            msg["reply_to_message"] = {k: v for k, v in replied.items() if k != "reply_to_message"}
        self._chat_msgs[chat_id][message_id] = msg
        self.push_update({"message": msg})
        return message_id


def _member(user: Params, status: str) -> Params:
    """A ChatMember object of `status` for `user`."""
    member: Params = {"status": status, "user": user}
    if status == "administrator":
        member |= dict.fromkeys(_ADMIN_RIGHTS, False) | {"can_manage_chat": True}
    elif status == "creator":
        member["is_anonymous"] = False
    elif status == "kicked":
        member["until_date"] = 0
    return member
