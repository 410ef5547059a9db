"""Agent runtime: the Assistant loop, tools, MCP servers, the code interpreter."""
