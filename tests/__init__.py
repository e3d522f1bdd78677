"""voicebot's tests."""

from voicebot.telegramtypes import import_deferred

# As `voicebot run`, `bot` and `worker` do: the tests use aiogram's types as the product does.
import_deferred()
