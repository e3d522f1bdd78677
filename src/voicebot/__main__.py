"""Allow `python -m voicebot`."""

from voicebot.cli import app

app()
