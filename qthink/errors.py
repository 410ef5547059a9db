"""RequestError: a request qthink refuses because of what the client sent, never an internal fault."""


class RequestError(ValueError):
    """Bad input: the message says what is wrong, `param` names the request field, `code` is a
    machine-readable reason (OpenAI's, where one exists: `context_length_exceeded`)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code
