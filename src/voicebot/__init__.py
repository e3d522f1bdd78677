"""voicebot: a self-hosted Telegram bot that turns speech into text on your own hardware."""

__version__ = "0.1.0"
