"""schemathesis hooks for scripts/schemathesis.sh: berth's own contract checks."""

import json

import schemathesis


@schemathesis.check
def problem_json(ctx, response, case):
    """Every error answer is problem+json (RFC 9457) with a machine-readable `code`."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith("application/problem+json"):
        raise AssertionError(
            f"{response.status_code} answered with content-type {content_type!r}"
        )
    try:
        body = json.loads(response.content)
    except ValueError as err:
        raise AssertionError(f"{response.status_code} body is not JSON: {err}") from err
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        raise AssertionError(f"{response.status_code} problem without a code: {body!r}")
    if body.get("status") != response.status_code:
        raise AssertionError(
            f"problem status {body.get('status')!r} differs from {response.status_code}"
        )
    return None
