"""A callback module that must never be imported without --allow-python: importing it writes a marker file."""

import os
from pathlib import Path

Path(os.environ.get("HOSTILE_MARKER", "hostile_imported.marker")).write_text("imported")


class Evil:
    def init(self, mm, tiling):
        pass

    def call(self, mm, msg, handle):
        handle.free_message(msg)
