"""Thinking-trace viewer: web chat, trace files and step segmentation."""

from qthink.extras import require

require("serve")
