"""Replicate's error answers: RFC 7807 problem details, never an HTML page.

The official clients read `title`, `detail` and `status` from the body into `ReplicateError`
(replicate-api-and-cog.md §1.6, §2.9), so every failure the API can report is an exception
here that carries exactly those fields; the app turns any of them into the same JSON shape.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from ...errors import TransportError, retryable_status

PROBLEM_JSON = "application/problem+json"


class APIError(TransportError):
    """An HTTP error answer of the emulated API."""

    status = 500
    title = "Internal server error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail, retryable=retryable_status(self.status))
        self.detail = detail
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return problem(self.status, self.title, self.detail, self.headers)


class BadRequest(APIError):
    status = 400
    title = "Bad request"


class Unauthenticated(APIError):
    """Replicate's exact words for a missing or wrong token."""

    status = 401
    title = "Unauthenticated"

    def __init__(self) -> None:
        super().__init__("You did not pass a valid authentication token")


class NotFound(APIError):
    status = 404
    title = "Not found"


class PayloadTooLarge(APIError):
    """The request body is over the emulator's size limit."""

    status = 413
    title = "Payload too large"


class InvalidInput(APIError):
    """The input does not match the version's Input schema (or names no version)."""

    status = 422
    title = "Input validation failed"


class Throttled(APIError):
    """429 with Retry-After, as Replicate's rate limiter answers (injected on demand)."""

    status = 429
    title = "Too many requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Request was throttled. Expected available in {retry_after} second"
            + ("s." if retry_after != 1 else "."),
            {"Retry-After": str(retry_after), "ratelimit-remaining": "0"},
        )


class ServerError(APIError):
    """A 5xx answer (injected: Replicate's own servers fail now and then)."""

    title = "Server error"

    def __init__(self, status: int) -> None:
        self.status = status  # first: it decides `retryable`
        super().__init__(f"injected server error {status}")


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"title": title, "detail": detail, "status": status},
        status_code=status,
        headers=headers,
        media_type=PROBLEM_JSON,
    )
