"""OpenAI-compatible HTTP server."""

from qthink.extras import require

require("serve")
